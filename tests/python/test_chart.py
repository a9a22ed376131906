"""The Helm chart with the real Helm library (helm-python-sdk, the Helm v4 Go SDK): strict lint
for the default values, each environment and every optional feature on; every rendered manifest
through `kubernetes-validate --strict` for Kubernetes 1.32; the custom resources against their CRD
schemas (tests/npm/validate.mjs) and their structure;
snapshots per environment; and every metric and label the alerts and dashboard query present in a
live `/metrics` scrape."""

import json
import os
import re
import subprocess
import sys

import helm_python as helm
import pytest
import requests
import yaml

from conftest import BIN, MODELS, ROOT, Service, TARGET, nimify_image, sha256_of

CHART = os.path.join(ROOT, "cargo-nimify", "chart")
SNAPSHOTS = os.path.join(os.path.dirname(__file__), "snapshots")
ENVS = ["dev", "staging", "prod"]
# What `cargo nimify chart` fills in; fixed here so renders are comparable.
SERVICE = {"image": {"repository": "127.0.0.1:5000/example-iris", "digest": "sha256:" + "ab" * 32}, "model": {"name": "iris", "sha256": "cd" * 32, "sizeBytes": 4096}}
ALL_ON = os.path.join(os.path.dirname(__file__), "chart-values-all.yaml")
# Labels Prometheus attaches from the scrape target (ServiceMonitor), not present in /metrics; the
# last from the pod label the ServiceMonitor copies with rollout.enabled (podTargetLabels).
TARGET_LABELS = {"namespace", "service", "pod", "job", "instance", "container", "endpoint", "rollouts_pod_template_hash"}


def load(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def values_for(env):
    layer = load(os.path.join(CHART, f"values-{env}.yaml")) if env in ENVS else load(ALL_ON) if env == "all" else {}
    return merge(SERVICE, layer)


def render(env, namespace="ml"):
    chart = helm.Chart.load(CHART)
    out = chart.render(values_for(env), name="iris", namespace=namespace, is_install=True)
    return {path: text for path, text in sorted(out.items()) if text.strip() and not path.endswith("NOTES.txt")}


def docs(rendered):
    return [d for text in rendered.values() for d in yaml.safe_load_all(text) if d]


def stable(manifests, kind, name="iris-nimify"):
    """The release's own (stable) resource of a kind, not the canary's."""
    return next(d for d in manifests if d["kind"] == kind and d["metadata"]["name"] == name)


def server(pod):
    """The service's container (a model-repository sidecar may run beside it)."""
    return next(c for c in pod["containers"] if c["name"] == "nimify")


@pytest.mark.parametrize("env", ["default", *ENVS, "all"])
def test_lints_clean_in_strict_mode(env):
    values = None if env == "default" else values_for(env)
    result = helm.lint(CHART, values, strict=True, kube_version="v1.32.0")
    assert result["errors"] == [] and result["messages"] == [], result


def enabled_paths(schema, path=()):
    """Every `*.enabled` key the schema declares."""
    for key, sub in schema.get("properties", {}).items():
        if key == "enabled":
            yield ".".join(path + (key,))
        yield from enabled_paths(sub, path + (key,))


def test_the_all_on_values_turn_every_feature_on():
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))
    values = load(ALL_ON)
    paths = list(enabled_paths(schema))
    assert len(paths) > 10, paths
    for p in paths:
        node = values
        for part in p.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        assert node is True, f"{p} is not true in {ALL_ON}"


def test_schema_covers_every_value():
    schema = json.load(open(os.path.join(CHART, "values.schema.json")))

    def walk(values, node, path):
        for key, value in values.items():
            here = f"{path}.{key}" if path else key
            props = node.get("properties", {})
            assert key in props or isinstance(node.get("additionalProperties"), (dict, bool)) and node.get("additionalProperties") is not False, f"{here} has no schema"
            sub = props.get(key) or (node.get("additionalProperties") if isinstance(node.get("additionalProperties"), dict) else {})
            assert "description" in sub or key not in props, f"{here} has no description"
            if isinstance(value, dict):
                walk(value, sub, here)

    for f in ["values.yaml", *[f"values-{e}.yaml" for e in ENVS]]:
        walk(load(os.path.join(CHART, f)), schema, "")
    walk(load(ALL_ON), schema, "")
    # The schema refuses what the service would refuse at start.
    with pytest.raises(helm.HelmValuesError, match="max_batch"):
        helm.Chart.load(CHART).render(merge(SERVICE, {"config": {"batching": {"max_batch": 3}}}), name="iris", namespace="ml")


# API groups of the custom resources the chart renders; tests/npm/validate.mjs has their schemas.
CUSTOM_GROUPS = ("monitoring.coreos.com/", "gateway.networking.k8s.io/", "argoproj.io/")
NPM = os.path.join(ROOT, "tests", "npm")


def check_custom(manifests):
    """tests/npm/validate.mjs over documents: the @kubernetes-models packages' CRD schemas (the
    operators' CRDs cannot be fetched here). Returns the finished process (one `ok` or `error`
    line per document; exit status 1 on any error)."""
    assert os.path.isdir(os.path.join(NPM, "node_modules")), "tests/npm/node_modules is missing: run `npm ci --prefix tests/npm` (`cargo xtask test` does)"
    return subprocess.run(["node", os.path.join(NPM, "validate.mjs")], input=json.dumps(manifests), capture_output=True, text=True, cwd=NPM)


def validate(manifests, tmp_path):
    """`kubernetes-validate --strict` for Kubernetes 1.32 over every built-in resource, and the
    custom resources (ServiceMonitor, PrometheusRule, HTTPRoute, Rollout, AnalysisTemplate)
    against their CRD schemas; returns the custom resources' `ok` lines."""
    builtin = [d for d in manifests if not d["apiVersion"].startswith(CUSTOM_GROUPS)]
    custom = [d for d in manifests if d["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert builtin
    path = tmp_path / "manifests.yaml"
    path.write_text(yaml.safe_dump_all(builtin))
    proc = subprocess.run([sys.executable, "-m", "kubernetes_validate", "-k", "1.32.0", "--strict", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # kubernetes-validate only warns about a kind it has no schema for.
    assert "Couldn't find schema" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    if not custom:
        return []
    proc = check_custom(custom)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == len(custom) and all(line.startswith("ok ") for line in lines), lines
    return lines


def test_tracing_and_the_audit_log_are_set_as_the_service_reads_them():
    def env_of(which):
        deploy = stable(docs(render(which)), "Deployment")
        c = server(deploy["spec"]["template"]["spec"])
        return {e["name"]: e.get("value") for e in c["env"]}

    on = env_of("all")
    assert on["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel-collector.observability:4318"
    assert (on["OTEL_EXPORTER_OTLP_PROTOCOL"], on["OTEL_TRACES_SAMPLER"], on["OTEL_TRACES_SAMPLER_ARG"]) == ("http/protobuf", "parentbased_traceidratio", "0.1")
    assert on["OTEL_SERVICE_NAME"] and on["NIMIFY_AUDIT_LOG"] == "-"
    off = env_of("default")
    assert not [k for k in off if k.startswith("OTEL_") or k == "NIMIFY_AUDIT_LOG"], off
    # The schema refuses what the service would refuse at start.
    for bad in ({"endpoint": "collector:4318"}, {"protocol": "http/json"}, {"samplerArg": "2"}, {"tls": {"ca": "x"}},
                {"endpoint": "http://collector:4318", "tls": {"secret": "otel-client"}}):
        with pytest.raises(helm.HelmValuesError):
            helm.Chart.load(CHART).render(merge(SERVICE, {"tracing": bad}), name="iris", namespace="ml")
    # An https collector: the CA (and, for mutual TLS, the client's pair) from a Secret mounted
    # where the variables point.
    tls = {"endpoint": "https://otel-collector.observability:4318", "tls": {"secret": "otel-client", "clientAuth": True}}
    out = helm.Chart.load(CHART).render(merge(SERVICE, {"tracing": tls}), name="iris", namespace="ml")
    deploy = next(d for path, text in out.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d and d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    [c] = pod["containers"]
    env = {e["name"]: e.get("value") for e in c["env"]}
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "otlp-tls"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "otlp-tls"]
    assert volume["secret"]["secretName"] == "otel-client" and mount["readOnly"]
    assert {env[k] for k in ("OTEL_EXPORTER_OTLP_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_KEY")} == \
        {f"{mount['mountPath']}/{f}" for f in ("ca.crt", "tls.crt", "tls.key")}


@pytest.mark.parametrize("env", ["default", *ENVS, "all"])
def test_manifests_validate_against_kubernetes_1_32(env, tmp_path):
    validate(docs(render(env)), tmp_path)


def test_custom_resources_have_the_operator_structure():
    # Beyond their CRD schemas (validate()): what the chart means by them.
    by_kind = {d["kind"]: d for d in docs(render("all"))}
    by_kind["Service"] = stable(docs(render("all")), "Service")
    sm = by_kind["ServiceMonitor"]
    assert sm["spec"]["selector"]["matchLabels"] == by_kind["Service"]["spec"]["selector"]
    assert sm["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "15s"}]
    assert sm["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    assert by_kind["Service"]["spec"]["ports"][0]["name"] == "http"
    rule = by_kind["PrometheusRule"]
    groups = {g["name"]: {r["alert"] for r in g["rules"]} for g in rule["spec"]["groups"]}
    assert groups == {"iris-nimify.slo": {"NimifyHighErrorRatio", "NimifyHighP99Latency", "NimifyDown"},
                      "iris-nimify.drift": {"NimifyDataDrift", "NimifyInputOutOfRange", "NimifyInputMissing"}}, groups
    for r in (r for g in rule["spec"]["groups"] for r in g["rules"]):
        assert set(r) <= {"alert", "expr", "for", "labels", "annotations"} and r["labels"]["severity"] in {"critical", "warning"}
        assert re.fullmatch(r"[0-9]+[smh]", r["for"]) and r["annotations"]["summary"]


def test_drift_alerts_take_their_thresholds_from_the_values():
    values = merge(values_for("prod"), {"prometheusRule": {"drift": {"psi": 0.25, "outOfRangeRatio": 0.1, "missingRatio": 0.02, "for": "30m"}}})
    out = helm.Chart.load(CHART).render(values, name="iris", namespace="ml", is_install=True)
    rule = next(d for path, text in out.items() if path.endswith("prometheusrule.yaml") for d in yaml.safe_load_all(text) if d)
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    psi, out_of_range, missing = alerts["NimifyDataDrift"], alerts["NimifyInputOutOfRange"], alerts["NimifyInputMissing"]
    assert psi["expr"].rstrip().endswith("> 0.25") and out_of_range["expr"].rstrip().endswith("> 0.1") and missing["expr"].rstrip().endswith("> 0.02")
    assert psi["for"] == out_of_range["for"] == missing["for"] == "30m"
    # The per-feature counts divide by their tensor's sampled rows, which carry no `feature`.
    for r in (out_of_range, missing):
        assert "/ on (model, version, tensor) group_left" in r["expr"], r["expr"]
    # Annotations are Prometheus templates that name the series and where to look next.
    assert "{{ $labels.feature }}" in psi["annotations"]["summary"] and "/v2/models/{{ $labels.model }}/drift" in psi["annotations"]["description"]
    with pytest.raises(helm.HelmValuesError):
        helm.Chart.load(CHART).render(merge(SERVICE, {"prometheusRule": {"drift": {"outOfRangeRatio": 5}}}), name="iris", namespace="ml")


def test_security_and_probes():
    deploy = next(d for d in docs(render("prod")) if d["kind"] == "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    [c] = pod["containers"]
    assert c["image"] == "127.0.0.1:5000/example-iris@sha256:" + "ab" * 32
    assert c["securityContext"]["readOnlyRootFilesystem"] and c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["startupProbe"]["httpGet"]["path"] == "/v2/health/live" and c["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert "requiredDuringSchedulingIgnoredDuringExecution" in pod["affinity"]["podAntiAffinity"]
    assert "replicas" not in deploy["spec"], "the HPA owns the replica count in prod"
    test_pod = next(d for d in docs(render("prod")) if d["kind"] == "Pod")
    assert test_pod["spec"]["containers"][0]["args"] == ["healthcheck"] and test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"


@pytest.mark.parametrize("env", ["default", *ENVS, "all"])
def test_termination_grace_outlasts_the_shutdown_delay_and_the_drain(env):
    """Kubernetes kills the pod terminationGracePeriodSeconds after SIGTERM: the service's delay
    (serving while endpoints drop the pod) plus its drain must end before that, with a margin."""
    import tomllib

    rendered = docs(render(env))
    deploy = stable(rendered, "Deployment")
    grace_ms = deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] * 1000
    cm = next(d for d in rendered if d["kind"] == "ConfigMap" and "config.toml" in d["data"])
    config = tomllib.loads(cm["data"]["config.toml"])
    # The service's own defaults where the chart leaves a key out.
    delay, drain = config.get("shutdown_delay_ms", 5000), config.get("drain_timeout_ms", 30000)
    assert delay > 0, "a zero delay drops requests Kubernetes still routes to the terminating pod"
    assert grace_ms >= delay + drain + 2000, f"{env}: grace {grace_ms} ms, delay {delay} + drain {drain} ms"


def test_the_rendered_config_is_accepted_by_the_service(tmp_path):
    cm = next(d for d in docs(render("all")) if d["kind"] == "ConfigMap" and "config.toml" in d["data"])
    config = tmp_path / "config.toml"
    config.write_text(cm["data"]["config.toml"])
    binary = os.path.join(TARGET, "debug", "example-iris")
    service = Service([binary, "--config", str(config), "--host", "127.0.0.1", "--port", "0"])
    assert service.stop() == 0


@pytest.mark.parametrize("env", ENVS)
def test_rendered_manifests_match_the_snapshot(env):
    rendered = "".join(f"# Source: {path}\n{text.strip()}\n---\n" for path, text in render(env).items())
    snapshot = os.path.join(SNAPSHOTS, f"chart-{env}.yaml")
    if os.environ.get("NIMIFY_UPDATE_SNAPSHOTS") == "1" and os.environ.get("CI") != "true":
        os.makedirs(SNAPSHOTS, exist_ok=True)
        with open(snapshot, "w") as f:
            f.write(rendered)
    assert os.path.exists(snapshot), f"{snapshot} missing: run with NIMIFY_UPDATE_SNAPSHOTS=1 and review it"
    with open(snapshot) as f:
        assert f.read() == rendered, f"chart output for {env} changed: rerun with NIMIFY_UPDATE_SNAPSHOTS=1 and review the diff"


PROMQL_WORDS = {"sum", "max", "topk", "rate", "by", "without", "histogram_quantile", "absent", "count", "clamp_min", "le", "on", "ignoring",
                "group_left", "group_right", "bool", "and", "or", "unless", "e", "label_values"}


def promql_names(expr):
    """(metric names, label names) used in a PromQL expression."""
    expr = re.sub(r'"[^"]*"', '""', expr)
    labels = set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", expr))
    for group in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    metrics = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[]", expr)) - PROMQL_WORDS
    # Grafana's label_values(metric[{...}], label).
    for metric, label in re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)[^,]*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)", expr):
        metrics.add(metric)
        labels.add(label)
    return metrics, labels


def test_promql_names_are_extracted():
    metrics, labels = promql_names('histogram_quantile(0.99, sum by (le) (rate(nimify_request_duration_seconds_bucket{namespace="a",service=~"b"}[5m]))) > 1')
    assert metrics == {"nimify_request_duration_seconds_bucket"} and labels == {"le", "namespace", "service"}
    assert promql_names('label_values(nimify_build_info{namespace="$namespace"}, service)') == ({"nimify_build_info"}, {"namespace", "service"})
    # Vector matching names labels too.
    assert promql_names("sum by (tensor, feature) (rate(a_total[5m])) / on (tensor) group_left sum by (tensor) (rate(b_total[5m]))") == \
        ({"a_total", "b_total"}, {"tensor", "feature"})


def test_alert_and_dashboard_queries_use_live_metric_and_label_names(start):
    exprs = []
    rendered = docs(render("all"))
    rule = next(d for d in rendered if d["kind"] == "PrometheusRule")
    exprs += [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    dashboard = json.loads(next(d for d in rendered if d["kind"] == "ConfigMap" and "nimify.json" in d.get("data", {}))["data"]["nimify.json"])
    # Row panels hold no queries.
    exprs += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    # The canary analysis (rollout.enabled) too.
    analysis = next(d for d in rendered if d["kind"] == "AnalysisTemplate")
    exprs += [m["provider"]["prometheus"]["query"] for m in analysis["spec"]["metrics"]]
    assert len(exprs) >= 26, exprs
    # A server with a reference profile (so the drift series exist; PSI once a request is
    # sampled), one inference, then a scrape.
    server = start("tabular", "--reference", os.path.join(MODELS, "tabular.profile.json"), "--drift-sample-rate", "1")
    body = {"inputs": [{"name": "x", "shape": [2, 6], "datatype": "FP32", "data": [0.1, -0.2, 0.3, -0.4, 0.5, -0.6, 1, 1, 1, 1, 1, 1]},
                       {"name": "segment", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]}]}
    assert requests.post(f"{server.url}/v2/models/tabular/infer", json=body, timeout=10).status_code == 200
    scrape = requests.get(f"{server.url}/metrics", timeout=5).text
    series = {line.split("{")[0].split(" ")[0] for line in scrape.splitlines() if line and not line.startswith("#")}
    scraped_labels = set(re.findall(r"[{,]([a-zA-Z_][a-zA-Z0-9_]*)=", scrape))
    queried = set()
    for expr in exprs:
        metrics, labels = promql_names(expr)
        assert metrics, expr
        assert metrics <= series, f"{metrics - series} not in /metrics (query: {expr})"
        assert labels <= scraped_labels | TARGET_LABELS, f"{labels - scraped_labels - TARGET_LABELS} not in /metrics (query: {expr})"
        queried |= metrics
    # Every drift series the service exports is alerted on or shown.
    drift = {s for s in series if s.startswith(("nimify_drift_", "nimify_input_"))}
    assert "nimify_drift_psi" in drift and drift <= queried, f"{drift - queried} exported but never queried"


def test_cargo_nimify_chart_writes_a_chart_for_the_built_image(tmp_path):
    iris = os.path.join(ROOT, "examples", "iris")
    image = nimify_image(iris, "--output", f"oci:{tmp_path / 'image'}:chart").result
    chart = tmp_path / "chart"
    proc = subprocess.run([BIN, "nimify", "chart", "--output", str(chart), "--format", "json"], cwd=iris, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["image"] == f"example-iris@{image['digest']}"
    own_prod = load(os.path.join(iris, "deploy", "prod.yaml"))
    for env in ["default", *ENVS]:
        values = {} if env == "default" else load(chart / f"values-{env}.yaml")
        if env == "prod":
            values = merge(values, own_prod)
        result = helm.lint(str(chart), values or None, strict=True, kube_version="v1.32.0")
        assert result["errors"] == [] and result["messages"] == [], (env, result)
        rendered = helm.Chart.load(str(chart)).render(values, name="iris", namespace="ml", is_install=True)
        manifests = [d for path, text in rendered.items() if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]
        validate(manifests, tmp_path)
        deploy = next(d for d in manifests if d["kind"] == "Deployment")
        assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == f"example-iris@{image['digest']}"
        assert deploy["metadata"]["annotations"]["nimify.io/model-sha256"] == sha256_of(os.path.join(iris, "iris.onnx"))
    notes = helm.Chart.load(str(chart)).render({}, name="iris", namespace="ml", is_install=True)
    text = next(t for p, t in notes.items() if p.endswith("NOTES.txt"))
    assert "kubectl --namespace ml port-forward service/iris-example-iris 8000:8000" in text and "/v2/models/iris" in text



def helm_values(argv):
    """The values a `helm upgrade` command line gives the chart: its --values files merged in
    order, then its --set pairs (true/false and whole numbers typed as Helm types them)."""
    values = {}
    i = 0
    while i < len(argv):
        if argv[i] == "--values":
            values = merge(values, load(argv[i + 1]))
            i += 2
        elif argv[i] == "--set":
            key, value = argv[i + 1].split("=", 1)
            typed = {"true": True, "false": False}.get(value, int(value) if value.isdigit() else value)
            node = {}
            for part in reversed(key.split(".")):
                node = {part: typed} if not node else {part: node}
            values = merge(values, node)
            i += 2
        else:
            i += 1
    return values


def test_canary_promote_and_abort_render_the_weights_of_each_step(tmp_path):
    """`deploy --canary 10`, then `promote` or `abort`, as dry runs: each printed `helm upgrade`
    renders (the chart `deploy` wrote, with the environment's values and the step's --set) to
    valid manifests with the HTTPRoute weights of that step: 90/10, then 100/0 with the canary
    still up, then no canary."""
    iris = os.path.join(ROOT, "examples", "iris")
    image = nimify_image(iris, "--output", f"oci:{tmp_path / 'image'}:canary").result
    new = image["digest"]
    old = "sha256:" + "0" * 64

    def steps(*args):
        proc = subprocess.run([BIN, "nimify", *args, "--env", "prod", "--dry-run", "--helm-version", "4", "--format", "json"],
                              cwd=iris, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
        commands = json.loads(proc.stdout)["commands"]
        assert all(c[:2] == ["helm", "upgrade"] for c in commands), commands
        rendered = []
        for argv in commands:
            chart = argv[3]
            out = helm.Chart.load(chart).render(helm_values(argv), name=argv[2], namespace="ml", is_install=False)
            manifests = [d for p, t in sorted(out.items()) if not p.endswith("NOTES.txt") for d in yaml.safe_load_all(t) if d]
            validate(manifests, tmp_path)
            rendered.append(manifests)
        return rendered

    def state(manifests):
        route = next(d for d in manifests if d["kind"] == "HTTPRoute")
        weights = {b["name"].removeprefix("iris-example-iris"): b.get("weight") for b in route["spec"]["rules"][-1]["backendRefs"]}
        images = {d["metadata"]["name"].removeprefix("iris-example-iris"): d["spec"]["template"]["spec"]["containers"][0]["image"].split("@")[1]
                  for d in manifests if d["kind"] == "Deployment"}
        return weights, images

    [started] = steps("deploy", "--canary", "10", "--stable-digest", old)
    assert state(started) == ({"": 90, "-canary": 10}, {"": old, "-canary": new})
    drained, promoted = steps("promote", "--stable-digest", old, "--canary-digest", new)
    assert state(drained) == ({"": 100, "-canary": 0}, {"": new, "-canary": new})
    assert state(promoted) == ({"": 100}, {"": new})
    drained, aborted = steps("abort", "--stable-digest", old, "--canary-digest", new)
    assert state(drained) == ({"": 100, "-canary": 0}, {"": old, "-canary": new})
    assert state(aborted) == ({"": 100}, {"": old})
    assert not [d for d in aborted if d["metadata"]["name"].endswith("-canary")]
