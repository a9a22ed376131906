"""Many models and versions, changed live, with real processes: a Triton-style model repository
(`REPO/<name>/<version>/model.onnx`, `config.toml` or `config.pbtxt`) served by `cargo nimify
serve REPO`, version policies, poll mode picking up new versions under a steady load with no
failed request, explicit load/unload over HTTP and gRPC with and without an API key, and a typed
service refusing a repository version with another signature.

Each version of the `adder` model answers `y = x + version`, so an answer says which version
served it."""

import json
import os
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
import requests
import tritonclient.grpc as grpcclient
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import InferenceServerException

from conftest import BIN, MODELS, ROOT, TARGET, Service, metrics
from test_timed_work import run_work, size_work, start_long

IRIS = os.path.join(ROOT, "examples", "iris", "iris.onnx")
SLOW = os.path.join(MODELS, "slow.onnx")
TRUNCATED = os.path.join(MODELS, "truncated.onnx")


def adder(path, k, width=4):
    """`x: float[batch, width]` -> `y = x + k`."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "k"], ["y"])],
        "adder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(np.full([width], k, dtype=np.float32), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def version_dir(repo, name, version, source=None, k=None, width=4):
    """Adds `repo/name/version/model.onnx` atomically (written beside it, then renamed), as a
    copy of `source` or an adder of `k` (default: the version)."""
    staging = repo / name / f".staging-{version}"
    staging.mkdir(parents=True)
    if source:
        shutil.copy(source, staging / "model.onnx")
    else:
        adder(str(staging / "model.onnx"), version if k is None else k, width)
    os.rename(staging, repo / name / str(version))


def repository(tmp_path, versions=(1, 2, 3), config=None, pbtxt=None):
    """A repository with `adder` at `versions` (and `config.toml` / `config.pbtxt` text) and the
    iris classifier at version 1."""
    repo = tmp_path / "repo"
    for v in versions:
        version_dir(repo, "adder", v)
    if config is not None:
        (repo / "adder" / "config.toml").write_text(config)
    if pbtxt is not None:
        (repo / "adder" / "config.pbtxt").write_text(pbtxt)
    version_dir(repo, "iris", 1, source=IRIS)
    return repo


def serve(repo, *flags, env=None):
    return Service([BIN, "nimify", "serve", str(repo), "--host", "127.0.0.1", "--port", "0", *flags], env=env)


def refused(repo, *flags):
    """Starts a server that must refuse to start; its stderr."""
    run = subprocess.run([BIN, "nimify", "serve", str(repo), "--host", "127.0.0.1", "--port", "0", *flags],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
    assert run.returncode != 0, run.stderr
    return run.stderr


def add(server, version=None, x=(1.0, 2.0, 3.0, 4.0), headers=None, model="adder"):
    path = f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"
    body = {"inputs": [{"name": "x", "shape": [1, len(x)], "datatype": "FP32", "data": list(x)}]}
    return requests.post(server.url + path, json=body, headers=headers, timeout=30)


def answered_by(response):
    """Which adder version answered: `y - x`."""
    assert response.status_code == 200, response.text
    return round(response.json()["outputs"][0]["data"][0] - 1.0)


def index(server, headers=None, **body):
    r = requests.post(f"{server.url}/v2/repository/index", json=body or None, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in r.json()}


def series(server, name):
    """{(model, version): value} of one metric."""
    out = {}
    for (n, labels), value in metrics(server).items():
        if n == name:
            parts = dict(p.split("=", 1) for p in labels.strip("{}").split(",") if p)
            out[(parts["model"].strip('"'), parts.get("version", '""').strip('"'))] = value
    return out


def wait_for(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_two_models_and_three_versions_with_their_metadata_routes_and_metrics(tmp_path):
    repo = repository(tmp_path, config='version_policy = "all"\n')
    server = serve(repo)
    try:
        meta = requests.get(f"{server.url}/v2/models/adder", timeout=5).json()
        assert meta["versions"] == ["1", "2", "3"]
        assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
        assert requests.get(f"{server.url}/v2/models/iris", timeout=5).json()["versions"] == ["1"]
        assert requests.get(f"{server.url}/v2/models/adder/versions/2", timeout=5).json()["versions"] == ["1", "2", "3"]
        # Each version route answers with its own version; the unversioned route with the newest.
        for v in (1, 2, 3):
            assert answered_by(add(server, v)) == v
            assert requests.get(f"{server.url}/v2/models/adder/versions/{v}/ready", timeout=5).status_code == 200
        assert answered_by(add(server)) == 3
        assert answered_by(add(server)) == 3
        missing = add(server, 4)
        assert missing.status_code == 404 and "ready versions: 1, 2, 3" in missing.json()["error"]
        assert add(server, "01").status_code == 404
        # Metrics carry the real version label.
        success = series(server, "nv_inference_request_success")
        assert success[("adder", "1")] == 1 and success[("adder", "2")] == 1 and success[("adder", "3")] == 3
        assert success[("iris", "1")] == 0
        assert index(server) == {
            ("adder", "1"): ("READY", ""), ("adder", "2"): ("READY", ""), ("adder", "3"): ("READY", ""),
            ("iris", "1"): ("READY", ""),
        }
        # Triton's client reads the same.
        import tritonclient.http as httpclient
        with httpclient.InferenceServerClient(server.address) as c:
            assert c.get_model_metadata("adder", "2")["versions"] == ["1", "2", "3"]
            assert {(m["name"], m["version"]) for m in c.get_model_repository_index()} == {
                ("adder", "1"), ("adder", "2"), ("adder", "3"), ("iris", "1")}
            assert "model_repository" in c.get_server_metadata()["extensions"]
        # gRPC too: metadata and the version route.
        g = grpcclient.InferenceServerClient(server.grpc_address)
        assert g.get_model_metadata("adder").versions == ["1", "2", "3"]
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones([1, 4], np.float32))
        assert g.infer("adder", [x], model_version="2").as_numpy("y").tolist() == [[3.0] * 4]
        g.close()
    finally:
        server.stop()


def test_inspect_lists_what_the_repository_would_serve(tmp_path):
    repo = repository(tmp_path, config="version_policy = { latest = 2 }\n")
    (repo / "adder" / "notes.txt").write_text("x")
    (repo / "adder" / "v4").mkdir()
    run = subprocess.run([BIN, "nimify", "inspect", str(repo)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "model adder (config.toml, version policy latest 2)" in run.stdout
    assert "version 1    not selected by the version policy" in run.stdout
    assert "version 3    served" in run.stdout
    assert "inputs (x: FP32 (float) [batch, 4]) -> outputs (y: FP32 (float) [batch, 4])" in run.stdout
    assert "skipped v4: a version directory is named by a positive integer" in run.stdout
    assert "skipped notes.txt: not a version directory" in run.stdout
    run = subprocess.run([BIN, "nimify", "inspect", str(repo), "--format", "json"], capture_output=True, text=True)
    report = json.loads(run.stdout)
    adder_report = next(m for m in report["models"] if m["name"] == "adder")
    assert [(v["version"], v["state"]) for v in adder_report["versions"]] == [
        (1, "not selected by the version policy"), (2, "served"), (3, "served")]
    assert adder_report["version_policy"] == {"latest": 2}
    # A broken version and a broken config are problems, with exit status 1.
    version_dir(repo, "adder", 5, source=TRUNCATED)
    (repo / "iris" / "config.toml").write_text("version_policy = \"newest\"\n")
    run = subprocess.run([BIN, "nimify", "inspect", str(repo)], capture_output=True, text=True)
    assert run.returncode == 1
    assert "problem: version 5:" in run.stdout and "truncated" in run.stdout
    assert "version_policy is" in run.stdout
    assert "models that would not load: adder, iris" in run.stderr


@pytest.mark.parametrize("config, pbtxt, served", [
    (None, None, ["3"]),
    ("version_policy = { latest = 2 }", None, ["2", "3"]),
    ("version_policy = { specific = [1, 3, 9] }", None, ["1", "3"]),
    ('version_policy = "all"', None, ["1", "2", "3"]),
    (None, "version_policy: { all { } }", ["1", "2", "3"]),
    (None, "version_policy { latest { num_versions: 2 } }", ["2", "3"]),
    (None, 'name: "adder"\nversion_policy: { specific: { versions: [2] } }', ["2"]),
])
def test_version_policies(tmp_path, config, pbtxt, served):
    server = serve(repository(tmp_path, config=config, pbtxt=pbtxt))
    try:
        assert requests.get(f"{server.url}/v2/models/adder", timeout=5).json()["versions"] == served
        assert answered_by(add(server)) == int(served[-1])
        entries = index(server)
        for v in ("1", "2", "3"):
            state, reason = entries[("adder", v)]
            assert (state == "READY") == (v in served), entries
            if v not in served:
                assert reason == "not selected by the version policy"
        assert index(server, ready=True).keys() == {("adder", v) for v in served} | {("iris", "1")}
    finally:
        server.stop()


def test_config_pbtxt_common_subset_is_honoured(tmp_path):
    pbtxt = """
        name: "adder"
        platform: "onnxruntime_onnx"
        max_batch_size: 8
        dynamic_batching { max_queue_delay_microseconds: 100 }
        instance_group [ { count: 2, kind: KIND_CPU } ]
        input [ { name: "x", data_type: TYPE_FP32, dims: [ 4 ] } ]
        output [ { name: "y", data_type: TYPE_FP32, dims: [ -1 ] } ]
    """
    server = serve(repository(tmp_path, pbtxt=pbtxt))
    try:
        config = requests.get(f"{server.url}/v2/models/adder/config", timeout=5).json()
        assert config["max_batch_size"] == 8
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
        assert config["instance_group"][0]["count"] == 2
        iris = requests.get(f"{server.url}/v2/models/iris/config", timeout=5).json()
        assert iris["instance_group"][0]["count"] == 1
    finally:
        server.stop()


@pytest.mark.parametrize("pbtxt, needle", [
    ("optimization { execution_accelerators { } }", "field optimization is not supported by nimify"),
    ("max_batch_size: 4\ndynamic_batching { preferred_batch_size: [ 8 ] }", "preferred_batch_size 8 must be between 1 and max_batch_size (4)"),
    ("max_batch_size: 4\ndynamic_batching { priority_levels: 2 }", "field dynamic_batching.priority_levels is not supported"),
    ("instance_group [ { kind: KIND_GPU } ]", "instance_group kind KIND_GPU"),
    ('platform: "tensorrt_plan"', 'platform "tensorrt_plan" is not served'),
    ('name: "other"', 'name "other" differs from the directory'),
    ('input [ { name: "x", data_type: TYPE_INT64, dims: [ 4 ] } ]', 'input "x" is FP32 in the model, not INT64'),
    ('max_batch_size: 8\ninput [ { name: "x", data_type: TYPE_FP32, dims: [ 5 ] } ]', 'input "x" has dims [4] in the model (less the batch dim), not [5]'),
    ('output [ { name: "z", data_type: TYPE_FP32, dims: [ -1, 4 ] } ]', 'output "z" is not in the model'),
    ("version_policy { newest { } }", "field version_policy.newest is not supported"),
    ("max_batch_size: 4 {", "line 1"),
    ("input " + "{ a " * 5000, "messages nest deeper than 32 levels"),
    ("instance_group [ { count: 0 } ]", "add up to 0"),
])
def test_config_pbtxt_fields_nimify_cannot_honour_are_refused(tmp_path, pbtxt, needle):
    err = refused(repository(tmp_path, pbtxt=pbtxt))
    assert needle in err, err
    assert "adder" in err


def test_repository_mistakes_are_refused_before_listening(tmp_path):
    repo = repository(tmp_path, config="[batching]\nmax_batch = 2\n")
    assert "unknown field `max_batch`" in refused(repo)
    # A model's sections get the server configuration's range checks.
    (repo / "adder" / "config.toml").write_text("[batching]\nqueue_capacity = 0\n")
    assert "batching.queue_capacity must be at least 1" in refused(repo)
    # A configuration file that is there but cannot be read is never taken as none.
    (repo / "adder" / "config.toml").unlink()
    (repo / "adder" / "config.toml").symlink_to(tmp_path / "nowhere.toml")
    assert "cannot read" in refused(repo)
    (repo / "adder" / "config.toml").unlink()
    (repo / "adder" / "config.toml").write_text("")
    (repo / "adder" / "config.pbtxt").write_text("")
    assert "both config.toml and config.pbtxt" in refused(repo)
    os.remove(repo / "adder" / "config.pbtxt")
    version_dir(repo, "broken", 1, source=TRUNCATED)
    err = refused(repo)
    assert 'model "broken": version 1:' in err and "truncated" in err
    shutil.rmtree(repo / "broken")
    (repo / "empty").mkdir()
    assert 'model "empty": no version to serve' in refused(repo)
    shutil.rmtree(repo / "empty")
    (repo / "adder" / "4").mkdir()
    assert "4/model.onnx is missing" in refused(repo)
    assert "serve takes one model repository directory" in refused(repo, "--model-repository", str(tmp_path))
    run = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--model-repository", str(tmp_path / "nowhere"),
                          "--port", "0"], capture_output=True, text=True, timeout=60)
    assert run.returncode != 0 and "nowhere: cannot list it" in run.stderr, run.stderr
    # A name given both as a file and as a repository model.
    run = subprocess.run([BIN, "nimify", "serve", str(repo), IRIS, "--port", "0"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
    assert run.returncode != 0 and 'model "iris" is given as the file' in run.stderr, run.stderr


def test_serve_takes_several_model_files(tmp_path):
    shutil.copy(IRIS, tmp_path / "iris.onnx")
    server = Service([BIN, "nimify", "serve", str(tmp_path / "iris.onnx"), os.path.join(MODELS, "mlp.onnx"),
                      "--host", "127.0.0.1", "--port", "0"])
    try:
        assert requests.get(f"{server.url}/v2/models/iris", timeout=5).status_code == 200
        assert requests.get(f"{server.url}/v2/models/mlp", timeout=5).json()["versions"] == ["1"]
        assert {k for k in index(server)} == {("iris", "1"), ("mlp", "1")}
    finally:
        server.stop()
    for argv, needle in [
        ([IRIS, str(tmp_path / "iris.onnx")], 'would both be served as "iris"'),
        ([IRIS, os.path.join(MODELS, "mlp.onnx"), "--name", "x"], "--name names one model file, and 2 were given"),
        ([str(tmp_path), str(tmp_path)], "serve takes one model repository directory"),
    ]:
        run = subprocess.run([BIN, "nimify", "serve", *argv, "--port", "0"], capture_output=True, text=True, timeout=60)
        assert run.returncode != 0 and needle in run.stderr, run.stderr


class Load:
    """Requests to the unversioned adder route, back to back from `threads` threads, until
    stopped: every answer's version, and every failure."""

    def __init__(self, server, threads=4):
        self.server = server
        self.answers = []
        self.failures = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for t in self.threads:
            t.start()

    def run(self):
        session = requests.Session()
        while not self.stopping.is_set():
            try:
                r = session.post(f"{self.server.url}/v2/models/adder/infer", timeout=30,
                                 json={"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
                if r.status_code == 200:
                    self.answers.append(round(r.json()["outputs"][0]["data"][0] - 1.0))
                else:
                    self.failures.append(f"{r.status_code} {r.text}")
            except requests.RequestException as e:
                self.failures.append(repr(e))

    def newest(self):
        return self.answers[-1] if self.answers else None

    def stop(self):
        self.stopping.set()
        for t in self.threads:
            t.join(timeout=60)


def test_poll_mode_switches_to_new_versions_under_load_without_a_failed_request(tmp_path):
    repo = repository(tmp_path, versions=(1,))
    interval_ms = 200
    server = serve(repo, "--model-control-mode", "poll", "--repository-poll-interval-ms", str(interval_ms))
    load = Load(server)
    try:
        wait_for(lambda: len(load.answers) > 50, "a steady load")
        assert set(load.answers) == {1}
        # A new version is loaded, warmed up and switched to.
        dropped = time.monotonic()
        version_dir(repo, "adder", 2)
        wait_for(lambda: load.newest() == 2, "version 2 to answer")
        switched = time.monotonic() - dropped
        print(f"version 2 answered {switched * 1000:.0f} ms after it was dropped in (poll interval {interval_ms} ms)")
        before = len(load.answers)
        wait_for(lambda: len(load.answers) > before + 50, "more answers")
        # The policy (latest 1) retired version 1: answers after the switch never come from it.
        answers = load.answers[before:]
        assert set(answers) == {2}, answers
        assert requests.get(f"{server.url}/v2/models/adder", timeout=5).json()["versions"] == ["2"]
        assert ("adder", "1") not in series(server, "nv_inference_request_success")
        # A broken new version leaves version 2 serving, and is reported.
        version_dir(repo, "adder", 3, source=TRUNCATED)
        wait_for(lambda: "truncated" in index(server)[("adder", "3")][1], "version 3 to be reported")
        state, reason = index(server)[("adder", "3")]
        assert "truncated" in reason, reason
        loads = {k: v for (n, k), v in metrics(server).items() if n == "nimify_model_loads_total"}
        assert loads['{model="adder",outcome="failure"}'] == 1, loads
        before = len(load.answers)
        wait_for(lambda: len(load.answers) > before + 50, "more answers")
        assert set(load.answers[before:]) == {2}
        # Still reported once: an unchanged broken file is not reloaded every poll.
        time.sleep(5 * interval_ms / 1000)
        loads = {k: v for (n, k), v in metrics(server).items() if n == "nimify_model_loads_total"}
        assert loads['{model="adder",outcome="failure"}'] == 1, loads
        # Fixed in place: version 3 is loaded.
        shutil.rmtree(repo / "adder" / "3")
        version_dir(repo, "adder", 3)
        wait_for(lambda: load.newest() == 3, "version 3 to answer")
        # A removed model directory is unloaded; iris serves on.
        load.stop()
        assert load.failures == [], load.failures[:5]
        print(f"{len(load.answers)} answers, 0 failures across two switches and one failed load")
        shutil.rmtree(repo / "adder")
        wait_for(lambda: add(server).status_code == 404, "adder to be unloaded")
        assert requests.get(f"{server.url}/v2/models/iris/ready", timeout=5).status_code == 200
        assert ("adder", "3") not in index(server)
    finally:
        load.stop()
        server.stop()
    assert "model load failed; the serving versions stay" in "".join(server.log)


def test_explicit_load_and_unload_need_the_api_key(tmp_path):
    repo = repository(tmp_path, versions=(1,))
    version_dir(repo, "broken", 1, source=TRUNCATED)
    # A model nobody loads at start may have a broken configuration: it is fixed while serving.
    version_dir(repo, "misconfigured", 1)
    (repo / "misconfigured" / "config.toml").write_text("nonsense = 1\n")
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    key = {"Authorization": "Bearer s3cret"}
    server = serve(repo, "--model-control-mode", "explicit", "--load-model", "adder", "--api-keys-file", str(keys))
    try:
        for path in ("/v2/repository/index", "/v2/repository/models/iris/load", "/v2/repository/models/adder/unload"):
            r = requests.post(server.url + path, timeout=5)
            assert r.status_code == 401, (path, r.text)
        entries = index(server, key)
        misconfigured = entries.pop(("misconfigured", ""))
        assert misconfigured[0] == "UNAVAILABLE" and "unknown field `nonsense`" in misconfigured[1], misconfigured
        assert entries == {
            ("adder", "1"): ("READY", ""), ("iris", "1"): ("UNAVAILABLE", "not loaded"),
            ("broken", "1"): ("UNAVAILABLE", "not loaded")}
        assert requests.get(f"{server.url}/v2/models/iris/ready", timeout=5).status_code == 404
        r = requests.post(f"{server.url}/v2/repository/models/iris/load", headers=key, timeout=60)
        assert r.status_code == 200, r.text
        assert requests.get(f"{server.url}/v2/models/iris/ready", timeout=5).status_code == 200
        # A model that fails to load is a 400 naming why; nothing else changes.
        r = requests.post(f"{server.url}/v2/repository/models/broken/load", headers=key, timeout=60)
        assert r.status_code == 400 and "truncated" in r.json()["error"], r.text
        assert index(server, key)[("broken", "1")][0] == "UNAVAILABLE"
        r = requests.post(f"{server.url}/v2/repository/models/nothere/load", headers=key, timeout=60)
        assert r.status_code == 404 and "has no model" in r.json()["error"]
        # Neither a name nobody has nor a failed load leaves metric series behind.
        scraped = requests.get(f"{server.url}/metrics", timeout=5).text
        assert 'model="nothere"' not in scraped
        assert 'model="broken",version=' not in scraped
        for hostile in ("%2Fetc", "..%2F..%2Fetc", "%2E%2E"):
            r = requests.post(f"{server.url}/v2/repository/models/{hostile}/unload", headers=key, timeout=60)
            assert r.status_code == 404, (hostile, r.text)
        r = requests.post(f"{server.url}/v2/repository/models/iris/load", headers=key, timeout=60,
                          json={"parameters": {"config": "{}"}})
        assert r.status_code == 400 and 'parameter "config" is not supported' in r.json()["error"]
        r = requests.post(f"{server.url}/v2/repository/models/iris/load", headers=key, data=b"{", timeout=60)
        assert r.status_code == 400
        # Reloading with a new version on disk switches to it.
        version_dir(repo, "adder", 2)
        assert answered_by(add(server, headers=key)) == 1
        assert requests.post(f"{server.url}/v2/repository/models/adder/load", headers=key, timeout=60).status_code == 200
        assert answered_by(add(server, headers=key)) == 2
        # All versions, one of them broken: nothing switches, and no version is left LOADING.
        (repo / "adder" / "config.toml").write_text('version_policy = "all"\n')
        version_dir(repo, "adder", 3, source=TRUNCATED)
        r = requests.post(f"{server.url}/v2/repository/models/adder/load", headers=key, timeout=60)
        assert r.status_code == 400 and "version 3" in r.json()["error"]
        entries = index(server, key)
        assert entries[("adder", "2")] == ("READY", "")
        assert entries[("adder", "1")][0] == "UNAVAILABLE" and "not switched to" in entries[("adder", "1")][1], entries
        assert entries[("adder", "3")][0] == "UNAVAILABLE" and "truncated" in entries[("adder", "3")][1]
        assert ("adder", "1") not in series(server, "nv_inference_request_success")
        shutil.rmtree(repo / "adder" / "3")
        (repo / "adder" / "config.toml").unlink()
        assert requests.post(f"{server.url}/v2/repository/models/adder/load", headers=key, timeout=60).status_code == 200
        # Only the ready ones with {"ready": true}.
        assert {k: v for k, v in index(server, key, ready=True).items()} == {
            ("adder", "2"): ("READY", ""), ("iris", "1"): ("READY", "")}
        r = requests.post(f"{server.url}/v2/repository/models/adder/unload", headers=key, timeout=60,
                          json={"parameters": {"unload_dependents": True}})
        assert r.status_code == 200, r.text
        assert add(server, headers=key).status_code == 404
        assert index(server, key)[("adder", "2")] == ("UNAVAILABLE", "unloaded")
        assert ("adder", "2") not in series(server, "nv_inference_request_success")
        r = requests.post(f"{server.url}/v2/repository/models/nothere/unload", headers=key, timeout=60)
        assert r.status_code == 404
    finally:
        server.stop()


def test_poll_mode_sees_replaced_files_reports_each_problem_once_and_drops_drift_series(tmp_path):
    repo = repository(tmp_path, versions=(1,))
    version_dir(repo, "tabular", 1, source=os.path.join(MODELS, "tabular.onnx"))
    shutil.copy(os.path.join(MODELS, "tabular.profile.json"), repo / "tabular" / "profile.json")
    (repo / "tabular" / "config.toml").write_text('reference = "profile.json"\n')
    server = serve(repo, "--model-control-mode", "poll", "--repository-poll-interval-ms", "100", "--drift-sample-rate", "1")
    loads = lambda outcome: metrics(server).get(("nimify_model_loads_total", f'{{model="adder",outcome="{outcome}"}}'), 0)
    try:
        # The same size and modification time, another file: still a change.
        model = repo / "adder" / "1" / "model.onnx"
        before = os.stat(model)
        adder(str(tmp_path / "five.onnx"), 5)
        assert os.path.getsize(tmp_path / "five.onnx") == before.st_size
        os.utime(tmp_path / "five.onnx", ns=(before.st_atime_ns, before.st_mtime_ns))
        os.replace(tmp_path / "five.onnx", model)
        wait_for(lambda: answered_by(add(server)) == 5, "the replaced file to be served")
        # A broken configuration is reported once, however many polls see it.
        failures = loads("failure")
        (repo / "adder" / "config.toml").write_text("version_policy = 7\n")
        wait_for(lambda: loads("failure") > failures, "the bad configuration to be reported")
        time.sleep(1.0)
        assert loads("failure") == failures + 1
        assert answered_by(add(server)) == 5
        # Drift counters of an unloaded version go with it.
        x = {"name": "x", "shape": [2, 6], "datatype": "FP32", "data": [0.1] * 12}
        seg = {"name": "segment", "shape": [2, 1], "datatype": "INT64", "data": [1, 2]}
        r = requests.post(f"{server.url}/v2/models/tabular/infer", json={"inputs": [x, seg]}, timeout=10)
        assert r.status_code == 200, r.text
        assert 'nimify_drift_sampled_rows_total{model="tabular"' in requests.get(f"{server.url}/metrics", timeout=5).text
        shutil.rmtree(repo / "tabular")
        wait_for(lambda: requests.get(f"{server.url}/v2/models/tabular/ready", timeout=5).status_code == 404, "tabular to go")
        scraped = requests.get(f"{server.url}/metrics", timeout=5).text
        assert 'model="tabular"' not in scraped.replace('nimify_model_loads_total{model="tabular"', "")
    finally:
        server.stop()


def test_unload_lets_running_requests_finish(tmp_path):
    repo = tmp_path / "repo"
    version_dir(repo, "slow", 1, source=SLOW)
    server = serve(repo, "--model-control-mode", "explicit", "--load-model", "*", "--batching", "false")
    try:
        work = size_work(server, 1.0, "an unload")
        with ThreadPoolExecutor(1) as pool:
            long = start_long(server, pool, work)
            r = requests.post(f"{server.url}/v2/repository/models/slow/unload", timeout=60)
            assert r.status_code == 200, r.text
            assert run_work(server, 0).status_code == 404
            response, _ = long.result()
            assert response.status_code == 200, response.text
            assert len(response.json()["outputs"][0]["data"]) == 8
    finally:
        server.stop()


def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    server = serve(repository(tmp_path, versions=(1,)), "--model-control-mode", "poll")
    try:
        r = requests.post(f"{server.url}/v2/repository/models/adder/unload", timeout=5)
        assert r.status_code == 400 and "needs --model-control-mode explicit" in r.json()["error"]
        assert answered_by(add(server)) == 1
    finally:
        server.stop()
    file_server = Service([BIN, "nimify", "serve", IRIS, "--host", "127.0.0.1", "--port", "0"])
    try:
        r = requests.post(f"{file_server.url}/v2/repository/models/iris/load", timeout=5)
        assert r.status_code == 400 and "needs a model repository" in r.json()["error"]
        assert index(file_server) == {("iris", "1"): ("READY", "")}
    finally:
        file_server.stop()


def test_grpc_repository_control_with_and_without_the_api_key(tmp_path):
    repo = repository(tmp_path, versions=(1,))
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    server = serve(repo, "--model-control-mode", "explicit", "--api-keys-file", str(keys))
    client = grpcclient.InferenceServerClient(server.grpc_address)
    key = {"authorization": "Bearer s3cret"}
    try:
        with pytest.raises(InferenceServerException) as e:
            client.get_model_repository_index()
        assert "UNAUTHENTICATED" in str(e.value.status())
        with pytest.raises(InferenceServerException):
            client.load_model("adder")
        index_ = client.get_model_repository_index(headers=key)
        assert {(m.name, m.version, m.state) for m in index_.models} == {
            ("adder", "1", "UNAVAILABLE"), ("iris", "1", "UNAVAILABLE")}
        client.load_model("adder", headers=key)
        assert client.is_model_ready("adder", headers=key)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones([1, 4], np.float32))
        assert client.infer("adder", [x], headers=key).as_numpy("y").tolist() == [[2.0] * 4]
        ready = client.get_model_repository_index(headers=key, as_json=True)
        assert {"name": "adder", "version": "1", "state": "READY"} in ready["models"]
        with pytest.raises(InferenceServerException) as e:
            client.load_model("nothere", headers=key)
        assert "has no model" in e.value.message()
        with pytest.raises(InferenceServerException) as e:
            client.load_model("adder", headers=key, config="{}")
        assert "not supported" in e.value.message()
        client.unload_model("adder", headers=key)
        with pytest.raises(InferenceServerException) as e:
            client.is_model_ready("adder", headers=key)
        assert "unknown model" in e.value.message()
    finally:
        client.close()
        server.stop()


def typed_iris(*flags):
    return [os.path.join(TARGET, "debug", "example-iris"), "--host", "127.0.0.1", "--port", "0", *flags]


def test_a_typed_service_refuses_a_repository_version_with_another_signature(tmp_path):
    repo = tmp_path / "repo"
    version_dir(repo, "iris", 1, source=IRIS)
    version_dir(repo, "iris", 2, k=1.0, width=3)
    (repo / "iris" / "config.toml").write_text('version_policy = "all"\n')
    run = subprocess.run(typed_iris("--model-repository", str(repo)), capture_output=True, text=True, timeout=60,
                         env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
    assert run.returncode != 0
    assert "version 2" in run.stderr and "its signature differs from the one compiled into this service" in run.stderr
    assert "compiled in: inputs (" in run.stderr and "in the file: inputs (" in run.stderr, run.stderr
    # Poll mode: version 1 serves the typed route; a version 3 with another signature is refused
    # and reported with both signatures, and version 1 serves on.
    shutil.rmtree(repo / "iris" / "2")
    (repo / "iris" / "config.toml").unlink()
    server = Service(typed_iris("--model-repository", str(repo), "--model-control-mode", "poll",
                                "--repository-poll-interval-ms", "200"))
    try:
        predict = lambda: requests.post(f"{server.url}/v1/models/iris/predict", json={"measurements": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10)
        assert predict().status_code == 200
        version_dir(repo, "iris", 3, k=1.0, width=3)
        wait_for(lambda: "compiled in" in index(server)[("iris", "3")][1], "version 3 to be refused")
        reason = index(server)[("iris", "3")][1]
        assert "compiled in: inputs (" in reason and "in the file: inputs (" in reason, reason
        r = predict()
        assert r.status_code == 200, r.text
        assert requests.get(f"{server.url}/v2/models/iris", timeout=5).json()["versions"] == ["1"]
    finally:
        server.stop()


def test_an_image_ships_a_repository_and_serves_it(tmp_path):
    """`cargo nimify image --model REPO`: the served versions and configuration files in a
    layer of their own at /opt/nimify/repository (NIMIFY_MODEL_REPOSITORY), checked before
    anything is built; the container serves every model and version."""
    from conftest import Container, skopeo_inspect
    repo = repository(tmp_path, config="version_policy = { latest = 2 }\n")
    version_dir(repo, "broken", 1, source=TRUNCATED)
    image = lambda *flags: subprocess.run([BIN, "nimify", "image", "--model", str(repo), *flags, "--format", "json"],
                                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    r = image()
    assert r.returncode != 0 and "truncated" in r.stderr, r.stderr
    shutil.rmtree(repo / "broken")
    r = image("--reference", "x.json")
    assert r.returncode != 0 and "a repository model names its own" in r.stderr, r.stderr
    assert not (tmp_path / "target" / "nimify" / "repo" / "image.json").exists()
    r = image()
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    record = json.load(open(tmp_path / "target" / "nimify" / "repo" / "image.json"))
    assert [l["role"] for l in record["layers"]][-1] == "repository"
    assert "model" not in [l["role"] for l in record["layers"]]
    assert sorted(m["name"] for m in record["models"]) == ["adder/2", "adder/3", "iris/1"]
    config = skopeo_inspect(result["reference"], config=True)["config"]
    assert "NIMIFY_MODEL_REPOSITORY=/opt/nimify/repository" in config["Env"]
    assert not any(e.startswith("NIMIFY_MODEL_SHA256=") for e in config["Env"])
    assert config["Entrypoint"][-2:] == ["nimify", "serve"]
    assert "adder/3=" in config["Labels"]["io.nimify.repository"]
    container = Container(result["reference"])
    try:
        class At:
            url = container.url
        assert requests.get(f"{container.url}/v2/models/adder", timeout=5).json()["versions"] == ["2", "3"]
        assert answered_by(add(At)) == 3 and answered_by(add(At, 2)) == 2
        assert requests.get(f"{container.url}/v2/models/iris/ready", timeout=5).status_code == 200
    finally:
        container.remove()
    # Rebuilt from the same files: the same image.
    again = image()
    assert again.returncode == 0 and json.loads(again.stdout)["digest"] == result["digest"]
