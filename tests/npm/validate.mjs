// Validates the chart's custom resources against their CRD schemas (the schemas the
// @kubernetes-models packages carry, since the operators' CRDs cannot be fetched in the tests).
//
// Usage: node validate.mjs < docs.json, where docs.json is a JSON array of rendered documents.
// Prints `ok <apiVersion> <Kind>/<name>` or `error <apiVersion> <Kind>/<name>: <message>` per
// document and exits 1 when any failed, or when a document's group has no schema here (so a new
// custom resource is not skipped in silence). Built-in kinds (apiVersion without a dot in its
// group, apps/v1, networking.k8s.io/...) are left to kubernetes-validate.
//
// What these schemas catch: wrong types, missing required fields, enums, patterns and bounds.
// What they do not: unknown fields (the generated schemas allow them) and the CRDs' CEL rules
// (x-kubernetes-validations, e.g. "a Service backendRef needs a port"); tests assert those.

import { readFileSync } from "node:fs";

/** The npm package holding each API group's models. */
const PACKAGES = {
  "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
  "argoproj.io": "@kubernetes-models/argo-rollouts",
  "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
};

/** Core and other in-tree groups: kubernetes-validate checks them. */
function builtin(apiVersion) {
  const group = apiVersion.includes("/") ? apiVersion.split("/")[0] : "";
  return group === "" || !group.includes(".") || group.endsWith(".k8s.io") && !(group in PACKAGES);
}

async function check(doc) {
  const { apiVersion = "", kind = "" } = doc ?? {};
  const what = `${apiVersion} ${kind}/${doc?.metadata?.name ?? "?"}`;
  if (builtin(apiVersion)) return { what, skipped: true };
  const pkg = PACKAGES[apiVersion.split("/")[0]];
  if (!pkg) return { what, error: `no schema for API group of ${apiVersion}: add its @kubernetes-models package to tests/npm` };
  let Model;
  try {
    ({ [kind]: Model } = await import(`${pkg}/${apiVersion}/${kind}`));
  } catch (e) {
    return { what, error: `no model for ${kind} in ${pkg} (${e.code ?? e.message})` };
  }
  try {
    new Model(doc).validate();
    return { what };
  } catch (e) {
    return { what, error: e.message };
  }
}

const input = readFileSync(process.argv[2] ?? 0, "utf8");
let docs;
try {
  docs = JSON.parse(input);
} catch (e) {
  console.error(`error: stdin is not JSON (${e.message}); pass a JSON array of documents`);
  process.exit(2);
}
if (!Array.isArray(docs)) {
  console.error("error: expected a JSON array of documents");
  process.exit(2);
}
let failed = 0;
for (const result of await Promise.all(docs.map(check))) {
  if (result.skipped) continue;
  if (result.error) {
    failed++;
    console.log(`error ${result.what}: ${result.error}`);
  } else {
    console.log(`ok ${result.what}`);
  }
}
process.exit(failed ? 1 : 0);
