"""The chart's canary and A/B rollouts (canary, httpRoute, rollout) and its model repository
(modelRepository): strict lint and validation in every environment with a canary and with an A/B
header, the custom resources against their CRD schemas (tests/npm/validate.mjs), the HTTPRoute's
weights, the canary's pods kept out of the stable selectors, and the values the chart refuses."""

import copy
import json
import re

import helm_python as helm
import pytest
import yaml

from test_chart import CHART, ENVS, SERVICE, check_custom, docs, merge, server, stable, validate, values_for

CANARY_DIGEST = "sha256:" + "ef" * 32
ROUTE = {"httpRoute": {"enabled": True, "parentRefs": [{"name": "gateway", "namespace": "infra"}]}}
# A canary on 10% of requests, without (canary) and with (ab) the A/B header rule.
CANARY = merge(ROUTE, {"canary": {"enabled": True, "weight": 10, "image": {"digest": CANARY_DIGEST}, "header": {"name": ""}}})
AB = merge(CANARY, {"canary": {"header": {"name": "x-nimify-variant", "value": "b"}}})
VARIANTS = {"canary": CANARY, "ab": AB}


def render_with(values, env="default"):
    out = helm.Chart.load(CHART).render(merge(values_for(env), values), name="iris", namespace="ml", is_install=True)
    return [d for path, text in sorted(out.items()) if not path.endswith("NOTES.txt") for d in yaml.safe_load_all(text) if d]


def notes_with(values):
    out = helm.Chart.load(CHART).render(merge(SERVICE, values), name="iris", namespace="ml", is_install=True)
    return next(t for p, t in out.items() if p.endswith("NOTES.txt"))


def route(manifests):
    return next(d for d in manifests if d["kind"] == "HTTPRoute")


def backends(rule):
    return [(b["name"], b.get("weight")) for b in rule["backendRefs"]]


def selects(selector, labels):
    """Whether a LabelSelector (matchLabels, matchExpressions with In) selects pods with labels."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("env", ["default", *ENVS, "all"])
def test_a_canary_lints_and_validates_in_every_environment(env, variant, tmp_path):
    values = merge(values_for(env), VARIANTS[variant])
    result = helm.lint(CHART, values, strict=True, kube_version="v1.32.0")
    assert result["errors"] == [] and result["messages"] == [], result
    manifests = render_with(VARIANTS[variant], env)
    checked = validate(manifests, tmp_path)
    assert any(" HTTPRoute/iris-nimify" in line for line in checked), checked
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    assert {("Deployment", "iris-nimify-canary"), ("Service", "iris-nimify-canary")} <= names


def test_every_custom_resource_is_checked_against_its_crd_schema(tmp_path):
    checked = validate(render_with({}, "all"), tmp_path)
    kinds = {line.split()[2].split("/")[0] for line in checked}
    assert kinds == {"ServiceMonitor", "PrometheusRule", "HTTPRoute", "Rollout", "AnalysisTemplate"}, checked


def test_the_crd_validator_catches_broken_documents():
    manifests = render_with({}, "all")
    broken_route = copy.deepcopy(route(manifests))
    broken_route["spec"]["rules"][-1]["backendRefs"][0]["weight"] = "ten"
    rollout = copy.deepcopy(next(d for d in manifests if d["kind"] == "Rollout"))
    rollout["spec"]["strategy"]["canary"]["steps"][0]["setWeight"] = "ten"
    monitor = copy.deepcopy(next(d for d in manifests if d["kind"] == "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["port"] = 8000
    analysis = copy.deepcopy(next(d for d in manifests if d["kind"] == "AnalysisTemplate"))
    del analysis["spec"]["metrics"][0]["provider"]
    unknown = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {"name": "x"}, "spec": {}}
    proc = check_custom([broken_route, rollout, monitor, analysis, unknown])
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith("error ") for line in lines), lines
    assert "backendRefs/0/weight must be integer" in lines[0]
    assert "setWeight must be integer" in lines[1]
    assert "endpoints/0/port must be string" in lines[2]
    assert "must have required property provider" in lines[3]
    assert "no schema for API group" in lines[4]


@pytest.mark.parametrize("weight", [0, 10, 100])
def test_the_route_splits_by_the_canary_weight(weight):
    manifests = render_with(merge(CANARY, {"canary": {"weight": weight}}))
    [rule] = route(manifests)["spec"]["rules"]
    assert backends(rule) == [("iris-nimify", 100 - weight), ("iris-nimify-canary", weight)]
    # A Service backend needs a port (a CEL rule of the CRD, which the schema check skips).
    assert all(b["port"] == 8000 for b in rule["backendRefs"])


def test_without_a_canary_the_route_sends_everything_to_the_stable_service():
    manifests = render_with(ROUTE)
    [rule] = route(manifests)["spec"]["rules"]
    assert backends(rule) == [("iris-nimify", 100)] and "matches" not in rule
    names = {(d["kind"], d["metadata"]["name"]) for d in manifests}
    assert not {n for n in names if n[1].endswith("-canary")}, names
    assert route(manifests)["spec"]["parentRefs"] == [{"name": "gateway", "namespace": "infra"}]
    # Without httpRoute no route at all, as before.
    assert not [d for d in render_with({}) if d["kind"] in ("HTTPRoute", "Rollout", "AnalysisTemplate")]


def test_the_ab_header_rule_comes_first_and_goes_to_the_canary_only():
    rules = route(render_with(merge(AB, {"canary": {"weight": 0}})))["spec"]["rules"]
    assert len(rules) == 2
    header, split = rules
    assert header["matches"] == [{"headers": [{"type": "Exact", "name": "x-nimify-variant", "value": "b"}]}]
    assert backends(header) == [("iris-nimify-canary", None)]
    assert backends(split) == [("iris-nimify", 100), ("iris-nimify-canary", 0)] and "matches" not in split


def test_the_canary_pods_stay_out_of_the_stable_selectors():
    manifests = render_with({}, "all")
    deploy, canary = stable(manifests, "Deployment"), stable(manifests, "Deployment", "iris-nimify-canary")
    service, canary_service = stable(manifests, "Service"), stable(manifests, "Service", "iris-nimify-canary")
    stable_pods, canary_pods = deploy["spec"]["template"]["metadata"]["labels"], canary["spec"]["template"]["metadata"]["labels"]
    # Selectors are immutable: the stable ones are what they were before canaries existed.
    before = stable(docs_of_prod(), "Deployment")["spec"]["selector"]
    assert deploy["spec"]["selector"] == before and service["spec"]["selector"] == before["matchLabels"]
    assert selects({"matchLabels": service["spec"]["selector"]}, stable_pods)
    assert not selects({"matchLabels": service["spec"]["selector"]}, canary_pods), "the stable Service would send canary pods stable traffic"
    assert selects({"matchLabels": canary_service["spec"]["selector"]}, canary_pods)
    assert not selects({"matchLabels": canary_service["spec"]["selector"]}, stable_pods)
    assert selects(canary["spec"]["selector"], canary_pods) and not selects(canary["spec"]["selector"], stable_pods)
    # Argo Rollouts takes the stable pods only; the PDB guards them; the NetworkPolicy guards both.
    rollout = next(d for d in manifests if d["kind"] == "Rollout")
    assert selects(rollout["spec"]["selector"], stable_pods) and not selects(rollout["spec"]["selector"], canary_pods)
    pdb = next(d for d in manifests if d["kind"] == "PodDisruptionBudget")
    assert not selects(pdb["spec"]["selector"], canary_pods)
    policy = next(d for d in manifests if d["kind"] == "NetworkPolicy")["spec"]["podSelector"]
    assert selects(policy, stable_pods) and selects(policy, canary_pods)
    assert not selects(policy, {**canary_pods, "app.kubernetes.io/instance": "other"})
    # The ServiceMonitor scrapes both Services (it selects Services by their labels).
    monitor = next(d for d in manifests if d["kind"] == "ServiceMonitor")
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert selects(monitor["spec"]["selector"], canary_service["metadata"]["labels"])


def docs_of_prod():
    return render_with({}, "prod")


def test_the_canary_mirrors_the_stable_pod_template_but_for_image_and_labels():
    manifests = render_with({}, "all")
    pod = stable(manifests, "Deployment")["spec"]["template"]
    canary = stable(manifests, "Deployment", "iris-nimify-canary")["spec"]["template"]
    assert server(pod["spec"])["image"] == SERVICE["image"]["repository"] + "@" + SERVICE["image"]["digest"]
    assert server(canary["spec"])["image"] == SERVICE["image"]["repository"] + "@" + CANARY_DIGEST
    server(canary["spec"])["image"] = server(pod["spec"])["image"]
    assert json.dumps(canary, sort_keys=True).replace('"iris-canary"', '"iris"') == json.dumps(pod, sort_keys=True)
    deploy = stable(render_with(merge(CANARY, {"canary": {"replicaCount": 2}}), "prod"), "Deployment", "iris-nimify-canary")
    assert deploy["spec"]["replicas"] == 2, "the canary is not autoscaled"


def test_a_canary_by_tag_and_the_digest_winning():
    by_tag = render_with(merge(CANARY, {"canary": {"image": {"digest": "", "tag": "v2"}}}))
    assert server(stable(by_tag, "Deployment", "iris-nimify-canary")["spec"]["template"]["spec"])["image"] == "127.0.0.1:5000/example-iris:v2"
    both = render_with(merge(CANARY, {"canary": {"image": {"tag": "v2"}}}))
    assert server(stable(both, "Deployment", "iris-nimify-canary")["spec"]["template"]["spec"])["image"].endswith("@" + CANARY_DIGEST)
    # Promotion as the CLI does it: the canary's digest becomes image.digest, the canary goes.
    promoted = render_with(merge(CANARY, {"image": {"digest": CANARY_DIGEST}, "canary": {"enabled": False}}))
    assert server(stable(promoted, "Deployment")["spec"]["template"]["spec"])["image"].endswith("@" + CANARY_DIGEST)
    assert backends(route(promoted)["spec"]["rules"][0]) == [("iris-nimify", 100)]


REFUSED_BY_SCHEMA = {
    "weight 150": {"canary": {"weight": 150}},
    "weight -1": {"canary": {"weight": -1}},
    "weight ten": {"canary": {"weight": "ten"}},
    "weight 10.5": {"canary": {"weight": 10.5}},
    "bad canary digest": {"canary": {"image": {"digest": "sha256:zz"}}},
    "canary replicas 0": {"canary": {"replicaCount": 0}},
    "header name with a space": {"canary": {"header": {"name": "x variant"}}},
    "controlMode bogus": {"modelRepository": {"enabled": True, "controlMode": "bogus"}},
    "poll interval 0": {"modelRepository": {"enabled": True, "pollIntervalMs": 0}},
    "relative repository path": {"modelRepository": {"enabled": True, "path": "models"}},
    "init container typo": {"modelRepository": {"enabled": True, "initContainer": {"image": "x", "comand": ["sync"]}}},
    "rollout step 150": {"rollout": {"enabled": True, "steps": [10, 150]}},
    "rollout without steps": {"rollout": {"enabled": True, "steps": []}},
    "rollout interval 1 minute": {"rollout": {"enabled": True, "analysis": {"interval": "1 minute"}}},
    "success rate 99": {"rollout": {"enabled": True, "analysis": {"successRate": 99}}},
    "prometheus without scheme": {"rollout": {"enabled": True, "analysis": {"prometheusAddress": "prometheus:9090"}}},
    "unknown canary key": {"canary": {"weigth": 10}},
}


@pytest.mark.parametrize("case", REFUSED_BY_SCHEMA)
def test_the_schema_refuses(case):
    with pytest.raises(helm.HelmValuesError):
        render_with(merge(CANARY, REFUSED_BY_SCHEMA[case]))


REFUSED_BY_TEMPLATE = {
    "canary without httpRoute": ({"canary": {"enabled": True, "image": {"digest": CANARY_DIGEST}}}, "canary.enabled needs httpRoute.enabled"),
    "canary without an image": (merge(ROUTE, {"canary": {"enabled": True}}), "canary.enabled needs the image to try: set canary.image.digest"),
    "route without a gateway": ({"httpRoute": {"enabled": True}}, "httpRoute.enabled needs httpRoute.parentRefs"),
    "header without a value": (merge(AB, {"canary": {"header": {"value": ""}}}), 'canary.header.name is "x-nimify-variant" but canary.header.value is empty'),
    "init container without an image": ({"modelRepository": {"enabled": True, "initContainer": {"args": ["sync"]}}}, "modelRepository.initContainer has no image"),
    "rollout without a ServiceMonitor": ({"rollout": {"enabled": True}}, "rollout.enabled needs serviceMonitor.enabled"),
    "sidecar without polling": ({"modelRepository": {"enabled": True, "controlMode": "none", "sidecar": {"image": "x"}}}, "set modelRepository.controlMode=poll"),
}


@pytest.mark.parametrize("case", REFUSED_BY_TEMPLATE)
def test_the_templates_refuse_with_a_message(case):
    values, message = REFUSED_BY_TEMPLATE[case]
    with pytest.raises(helm.HelmError, match=message.replace(".", r"\.")):
        render_with(values)


def test_the_rollout_steps_and_analysis_follow_the_values():
    values = {"serviceMonitor": {"enabled": True}, "rollout": {"enabled": True, "steps": [5, 25, 75], "analysis": {"interval": "2m", "count": 3, "failureLimit": 0, "successRate": 0.995, "p99Seconds": 0.25}}}
    manifests = render_with(values, "prod")
    rollout = next(d for d in manifests if d["kind"] == "Rollout")
    assert rollout["spec"]["workloadRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris-nimify", "scaleDown": "progressively"}
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [5, 25, 75]
    assert [next(iter(s)) for s in steps] == ["setWeight", "pause", "analysis"] * 3
    assert all(s["pause"] == {"duration": "2m"} for s in steps if "pause" in s)
    analysis_steps = [s["analysis"] for s in steps if "analysis" in s]
    assert all(a["templates"] == [{"templateName": "iris-nimify"}] and a["args"] == [{"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}] for a in analysis_steps)
    # prod autoscales: the HPA scales the Rollout, and neither the Deployment nor the Rollout
    # states a replica count (Argo Rollouts scales the Deployment to 0).
    hpa = next(d for d in manifests if d["kind"] == "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": "iris-nimify"}
    assert "replicas" not in rollout["spec"] and "replicas" not in stable(manifests, "Deployment")["spec"]
    # The ServiceMonitor puts the pods' template hash on their series.
    monitor = next(d for d in manifests if d["kind"] == "ServiceMonitor")
    assert monitor["spec"]["podTargetLabels"] == ["rollouts-pod-template-hash"]
    assert "podTargetLabels" not in next(d for d in render_with({}, "prod") if d["kind"] == "ServiceMonitor")["spec"]
    template = next(d for d in manifests if d["kind"] == "AnalysisTemplate")
    assert template["spec"]["args"] == [{"name": "canary-hash"}]
    metrics = {m["name"]: m for m in template["spec"]["metrics"]}
    assert set(metrics) == {"success-rate", "p99-latency"}
    for m in metrics.values():
        assert (m["interval"], m["count"], m["failureLimit"]) == ("2m", 3, 0)
        query = m["provider"]["prometheus"]["query"]
        # Only the new pods of this release: the template hash the Rollout passes.
        selectors = re.findall(r"[a-z_]+\{([^}]*\}\}[^}]*)\}", query)
        assert len(selectors) == query.count("rate(") and set(selectors) == {'namespace="ml",service="iris-nimify",rollouts_pod_template_hash="{{args.canary-hash}}"'}, query
        assert "[2m]" in query
    assert "nv_inference_request_success" in metrics["success-rate"]["provider"]["prometheus"]["query"]
    assert "nv_inference_request_failure" in metrics["success-rate"]["provider"]["prometheus"]["query"]
    assert metrics["success-rate"]["successCondition"].endswith("result[0] >= 0.995")
    assert metrics["success-rate"]["failureCondition"].endswith("result[0] < 0.995")
    assert metrics["p99-latency"]["provider"]["prometheus"]["query"].startswith("histogram_quantile(0.99, ")
    assert metrics["p99-latency"]["successCondition"].endswith("result[0] <= 0.25")
    assert metrics["p99-latency"]["failureCondition"].endswith("result[0] > 0.25")
    # No data (no request in the window) is neither: inconclusive, the Rollout pauses.
    assert all(m[c].startswith("len(result) > 0 && !isNaN(result[0]) && ") for m in metrics.values() for c in ("successCondition", "failureCondition"))
    # Without autoscaling the Rollout holds replicaCount and the Deployment states none.
    plain = render_with(values)
    assert next(d for d in plain if d["kind"] == "Rollout")["spec"]["replicas"] == 1
    assert "replicas" not in stable(plain, "Deployment")["spec"]


def repository_pod(values, env="default"):
    manifests = render_with(values, env)
    return manifests, stable(manifests, "Deployment")["spec"]["template"]["spec"]


def test_a_model_repository_is_mounted_read_only_and_filled_by_its_containers(tmp_path):
    manifests, pod = repository_pod({}, "all")
    validate(manifests, tmp_path)
    c = server(pod)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert (env["NIMIFY_MODEL_REPOSITORY"], env["NIMIFY_MODEL_CONTROL_MODE"], env["NIMIFY_REPOSITORY_POLL_INTERVAL_MS"]) == ("/models/repository", "poll", "10000")
    [mount] = [m for m in c["volumeMounts"] if m["name"] == "model-repository"]
    assert mount == {"name": "model-repository", "mountPath": "/models/repository", "readOnly": True}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-repository"] == {"name": "model-repository", "emptyDir": {}}
    [init] = pod["initContainers"]
    sync = next(x for x in pod["containers"] if x["name"] != "nimify")
    assert (init["name"], sync["name"]) == ("model-repository-init", "model-repository-sync")
    for helper in (init, sync):
        mounts = {m["mountPath"]: m for m in helper["volumeMounts"]}
        assert mounts["/models/repository"]["name"] == "model-repository" and not mounts["/models/repository"].get("readOnly")
        assert mounts["/tmp"]["name"] == "model-repository-tmp" and "model-repository-tmp" in volumes
        # The server's hardened securityContext where the values give none.
        assert helper["securityContext"] == c["securityContext"]
        assert helper["image"] == "amazon/aws-cli:2.17.0"
    assert init["args"] == ["s3", "sync", "s3://models/iris-repository", "/models/repository"]
    assert sync["resources"]["limits"]["memory"] == "256Mi"
    # The canary serves the same repository.
    canary = stable(manifests, "Deployment", "iris-nimify-canary")["spec"]["template"]["spec"]
    assert canary["volumes"] == pod["volumes"] and canary["initContainers"] == pod["initContainers"]


def test_a_model_repository_on_a_claim_with_the_users_own_settings(tmp_path):
    values = {"modelRepository": {"enabled": True, "path": "/srv/models", "controlMode": "explicit",
                                  "volume": {"persistentVolumeClaim": {"claimName": "models"}},
                                  "initContainer": {"name": "fetch", "image": "busybox:1.36", "command": ["true"],
                                                    "securityContext": {"readOnlyRootFilesystem": False, "allowPrivilegeEscalation": False},
                                                    "volumeMounts": [{"name": "config", "mountPath": "/etc/nimify", "readOnly": True}]}}}
    manifests, pod = repository_pod(values)
    validate(manifests, tmp_path)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["model-repository"] == {"name": "model-repository", "persistentVolumeClaim": {"claimName": "models"}}
    [init] = pod["initContainers"]
    assert init["name"] == "fetch" and init["securityContext"] == {"readOnlyRootFilesystem": False, "allowPrivilegeEscalation": False}
    assert [m["mountPath"] for m in init["volumeMounts"]] == ["/etc/nimify", "/srv/models", "/tmp"]
    assert [c["name"] for c in pod["containers"]] == ["nimify"]
    assert {e["name"]: e.get("value") for e in server(pod)["env"]}["NIMIFY_MODEL_CONTROL_MODE"] == "explicit"
    # Only the repository: no init container, no sidecar, no /tmp for them.
    manifests, pod = repository_pod({"modelRepository": {"enabled": True}})
    validate(manifests, tmp_path)
    assert "initContainers" not in pod and [v["name"] for v in pod["volumes"]] == ["config", "tmp", "model-cache", "model-repository"]
    # Off: nothing of it.
    _, pod = repository_pod({})
    assert "NIMIFY_MODEL_REPOSITORY" not in json.dumps(pod) and "model-repository" not in json.dumps(pod)


def test_notes_say_how_to_watch_promote_and_abort():
    text = notes_with(merge(AB, {"rollout": {"enabled": True}, "serviceMonitor": {"enabled": True}}))
    assert "iris-nimify-canary" in text and "10%" in text and "-H 'x-nimify-variant: b'" in text
    assert "--reuse-values --set image.digest=" + CANARY_DIGEST + " --set canary.enabled=false" in text
    assert "kubectl argo rollouts get rollout iris-nimify --namespace ml --watch" in text
    assert "canary" not in notes_with({}).lower() and "argo" not in notes_with({}).lower()
