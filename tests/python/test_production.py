"""The production runtime against real `cargo nimify serve` processes: dynamic batching, exact
Triton metrics, API keys, request ids, logs, configuration and warm-up. (Overload, disconnected
clients, timeouts and SIGTERM drain need work that takes time: test_timed_work.py.)"""

import os
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnxruntime as ort
import pytest
import requests

from conftest import BIN, MODELS, Server, Service, metric, metrics


def infer_json(server, model, x, timeout=10):
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.flatten().tolist()}]}
    return requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=timeout)


# The second set also exercises several session instances and non-default session options.
# The fixed policy merges whatever is queued; the learned one (the default) merges only what its
# measurements say pays, which depends on this CPU, so only the answers are checked with it.
@pytest.mark.parametrize("policy", ["fixed", "learned"])
@pytest.mark.parametrize("session", [[], ["--instances", "2", "--optimization", "basic", "--memory-arena", "true", "--intra-threads", "1"]])
def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(start, session, policy):
    server = start("mlp", "--max-queue-delay-us", "20000", "--max-batch-size", "16", "--batch-policy", policy, *session)
    sess = ort.InferenceSession(os.path.join(MODELS, "mlp.onnx"))
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(96)]

    def call(x):
        r = infer_json(server, "mlp", x)
        assert r.status_code == 200, r.text
        return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(x.shape[0], 3)

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(call, inputs))
    for x, got in zip(inputs, results):
        np.testing.assert_allclose(got, sess.run(["probs"], {"x": x})[0], rtol=1e-6, atol=1e-7)
    m = metrics(server)
    labels = '{model="mlp",version="1"}'
    items = sum(x.shape[0] for x in inputs)
    assert m[("nv_inference_request_success", labels)] == 96
    assert m[("nv_inference_count", labels)] == items + 0  # warm-up runs are not requests
    if policy == "learned":
        return
    assert m[("nv_inference_exec_count", labels)] < 96
    buckets = {k[1]: v for k, v in m.items() if k[0] == "nimify_batch_size_bucket" and 'model="mlp"' in k[1]}
    le1 = next(v for k, v in buckets.items() if 'le="1"' in k)
    total = m[("nimify_batch_size_count", labels)]
    assert total - le1 > 0, "no execution held more than one item"


@pytest.mark.parametrize("model", ["scalar", "batch_mismatch"])
def test_models_that_cannot_batch_stay_correct_with_batching_on(start, model):
    server = start(model, "--batching", "true", "--batch-policy", "fixed", "--max-queue-delay-us", "20000")
    sess = ort.InferenceSession(os.path.join(MODELS, f"{model}.onnx"))
    rng = np.random.default_rng(2)

    def call(i):
        if model == "scalar":
            a, b = np.array(i * 0.5, np.float32), np.array(i, np.int64)
            body = {"inputs": [{"name": "a", "shape": [], "datatype": "FP32", "data": [float(a)]},
                               {"name": "b", "shape": [], "datatype": "INT64", "data": [int(b)]}]}
            want = sess.run(["sum"], {"a": a, "b": b})[0].reshape(-1)
        else:
            x = rng.standard_normal((2, 2)).astype(np.float32)
            body = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": x.flatten().tolist()}]}
            want = sess.run(["total"], {"x": x})[0].reshape(-1)
        r = requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=10)
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["outputs"][0]["data"], want, rtol=1e-6)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(call, range(48)))
    assert metric(server, "nv_inference_request_success", model) == 48


def test_learned_batching_stops_merging_requests_whose_merge_always_fails(start):
    """batch_mismatch answers a merged batch with the wrong dim 0, so every merge runs again one by
    one. Rounds of two concurrent two-item requests, a batch of four preferred: once size 2 is
    measured (three rounds), the first merge fails, and the learned policy refuses that size from
    then on (but for a retry every 1024 refusals), so each request runs alone: two executions a
    round, where a failed merge costs three."""
    server = start("batch_mismatch", "--batch-policy", "learned", "--max-batch-size", "4", "--preferred-batch-size", "4",
                   "--max-queue-delay-us", "500000", "--instances", "1")
    x = {"inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}]}

    def call(_):
        r = requests.post(f"{server.url}/v2/models/batch_mismatch/infer", json=x, timeout=30)
        assert r.status_code == 200, r.text
        return r.json()["outputs"][0]["data"]

    def round_of_two():
        before = metric(server, "nv_inference_exec_count", "batch_mismatch")
        with ThreadPoolExecutor(2) as pool:
            answers = list(pool.map(call, range(2)))
        assert answers[0] == answers[1]
        return metric(server, "nv_inference_exec_count", "batch_mismatch") - before

    first = [round_of_two() for _ in range(8)]
    assert first.count(3) == 1, first
    assert [round_of_two() for _ in range(6)] == [2] * 6


def test_a_preferred_batch_size_runs_without_waiting_out_the_delay(start):
    """Four one-item requests with preferred size 4 and a 60 s queue delay: the batch runs as soon
    as it holds four (a wait for more would outlast the clients' 30 s timeout)."""
    server = start("mlp", "--batch-policy", "fixed", "--preferred-batch-size", "4", "--max-batch-size", "16",
                   "--max-queue-delay-us", "60000000", "--request-timeout-ms", "0", "--instances", "1")
    config = requests.get(f"{server.url}/v2/models/mlp/config", timeout=5).json()
    assert config["dynamic_batching"]["preferred_batch_size"] == [4]
    executed = metric(server, "nv_inference_exec_count", "mlp")
    xs = [np.full((1, 4), i, np.float32) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda x: infer_json(server, "mlp", x, timeout=30), xs))
    assert [r.status_code for r in answers] == [200] * 4, [r.text for r in answers]
    assert metric(server, "nv_inference_exec_count", "mlp") - executed == 1, "the four did not share one run"


def test_batch_policy_and_preferred_sizes_are_checked(tmp_path):
    for args, needle in [
        (["--batch-policy", "sometimes"], "use learned or fixed"),
        (["--preferred-batch-size", "64"], "preferred_batch_size 64 must be between 1 and max_batch_size (32)"),
        (["--preferred-batch-size", "0"], "preferred_batch_size 0"),
        (["--preferred-batch-size", "two"], "two"),
    ]:
        r = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), *args],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode != 0 and needle in r.stderr, (args, r.stderr)
    bad = tmp_path / "bad.toml"
    bad.write_text('[batching]\npolicy = "greedy"\n')
    r = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "greedy" in r.stderr, r.stderr


def test_metrics_are_exact(start):
    server = start("mlp", "--batching", "false")
    good = np.ones((3, 4), np.float32)
    for _ in range(5):
        assert infer_json(server, "mlp", good).status_code == 200
    bad = {"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}]}
    for _ in range(2):
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=bad, timeout=5).status_code == 422
    m = metrics(server)
    labels = '{model="mlp",version="1"}'
    assert m[("nv_inference_request_success", labels)] == 5
    assert m[("nv_inference_request_failure", labels)] == 2
    assert m[("nv_inference_count", labels)] == 15
    assert m[("nv_inference_exec_count", labels)] == 5
    for name in ("nv_inference_request_duration_us", "nv_inference_queue_duration_us", "nv_inference_compute_infer_duration_us"):
        assert m[(name, labels)] > 0, name
    assert m[("nv_inference_pending_request_count", labels)] == 0
    assert m[("nimify_request_duration_seconds_count", '{model="mlp",protocol="http",version="1"}')] == 7
    assert m[("nimify_request_duration_seconds_count", '{model="mlp",protocol="grpc",version="1"}')] == 0


def test_api_keys(start, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# mounted secret\nsecret-one\nsecret-two\n")
    server = start("mlp", "--api-keys-file", str(keys))
    x = np.ones((1, 4), np.float32)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.flatten().tolist()}]}
    url = f"{server.url}/v2/models/mlp/infer"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"x-api-key": "secret-on"}):
        r = requests.post(url, json=body, headers=headers, timeout=5)
        assert r.status_code == 401, headers
        assert "API key" in r.json()["error"]
    assert requests.post(url, json=body, headers={"Authorization": "Bearer secret-one"}, timeout=5).status_code == 200
    # RFC 9110: the scheme is case-insensitive.
    assert requests.post(url, json=body, headers={"Authorization": "bearer secret-one"}, timeout=5).status_code == 200
    assert requests.post(url, json=body, headers={"x-api-key": "secret-two"}, timeout=5).status_code == 200
    assert requests.get(f"{server.url}/v2/models/mlp", timeout=5).status_code == 401
    for open_path in ("/v2/health/live", "/v2/health/ready", "/v2/models/mlp/ready", "/metrics"):
        assert requests.get(server.url + open_path, timeout=5).status_code == 200, open_path


def test_request_id_is_honoured_and_returned(start):
    server = start("mlp")
    r = requests.get(f"{server.url}/v2", headers={"x-request-id": "trace-123"}, timeout=5)
    assert r.headers["x-request-id"] == "trace-123"
    generated = requests.get(f"{server.url}/v2", timeout=5).headers["x-request-id"]
    assert len(generated) >= 16


def test_bad_flag_values_are_clear_errors():
    r = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--optimization", "fastest"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "unknown optimization level" in r.stderr
    r = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--instances", "0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "session.instances must be at least 1" in r.stderr


def test_config_file_and_unknown_keys(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("port = 0\n[batching]\nmax_batch = 4\n")
    r = subprocess.run([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--config", str(bad)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "max_batch" in r.stderr and str(bad) in r.stderr
    good = tmp_path / "good.toml"
    good.write_text('host = "127.0.0.1"\nport = 0\n[batching]\nmax_batch_size = 4\nmax_queue_delay_us = 100\n')
    env = dict(os.environ, NIMIFY_CONFIG=str(good), NIMIFY_MAX_BATCH_SIZE="8")
    server = Service([BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx")], env=env)
    try:
        config = requests.get(f"{server.url}/v2/models/mlp/config", timeout=5).json()
        # env beats the file; the file beats the defaults.
        assert config["max_batch_size"] == 8
        assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    finally:
        server.stop()


def test_api_keys_from_the_environment():
    keys = dict(os.environ, NIMIFY_API_KEYS="k1,k2")
    server = Server(os.path.join(MODELS, "mlp.onnx"), env=keys)
    try:
        url = f"{server.url}/v2/models/mlp"
        assert requests.get(url, timeout=5).status_code == 401
        assert requests.get(url, headers={"x-api-key": "k2"}, timeout=5).status_code == 200
        # The keys never show up in the help text's env hints.
        help_text = subprocess.run([BIN, "nimify", "serve", "--help"], env=keys, capture_output=True, text=True).stdout
        assert "k1" not in help_text
    finally:
        server.stop()


def test_logs_are_json_lines_with_the_request_id(start):
    import json

    server = start("mlp")
    bad = {"inputs": [{"name": "nope", "shape": [1], "datatype": "FP32", "data": [1]}]}
    r = requests.post(f"{server.url}/v2/models/mlp/infer", json=bad, headers={"x-request-id": "req-abc-123"}, timeout=5)
    assert r.status_code == 422 and r.headers["x-request-id"] == "req-abc-123"
    deadline = time.time() + 5
    while time.time() < deadline and not any("req-abc-123" in l for l in server.log):
        time.sleep(0.05)
    line = next(l for l in server.log if "req-abc-123" in l)
    event = json.loads(line)
    assert event["request_id"] == "req-abc-123" and event["status"] == 422 and event["path"] == "/v2/models/mlp/infer"


def test_onnx_runtime_failures_are_logged_in_full_with_the_request_id(start):
    import json

    server = start("odd_length")
    x = {"inputs": [{"name": "x", "shape": [3], "datatype": "FP32", "data": [1, 2, 3]}]}
    r = requests.post(f"{server.url}/v2/models/odd_length/infer", json=x, headers={"x-request-id": "ort-failure-7"}, timeout=5)
    assert r.status_code == 500 and "cannot be reshaped" in r.json()["error"] and "onnxruntime_src" not in r.json()["error"]
    deadline = time.time() + 5
    while time.time() < deadline and not any("ort-failure-7" in l and "reshape_helper" in l for l in server.log):
        time.sleep(0.05)
    # The warm-up (n = 1) failed the same way, logged as a warning, and ONNX Runtime logs its own
    # error line; the request's failure is the "request failed" line.
    [line] = [e for e in map(json.loads, server.log) if e.get("message") == "request failed" and "reshape_helper" in e.get("error", "")]
    assert line["level"] == "ERROR" and line["span"]["request_id"] == "ort-failure-7", line


def test_every_thread_stays_on_the_cpus_the_process_may_use():
    """Under `taskset -c 0` the intra-op pool is sized to that one CPU and no thread (ONNX
    Runtime's pool used to pin one to another core) is allowed anywhere else."""
    import json

    server = Service(["taskset", "-c", "0", BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--host", "127.0.0.1", "--port", "0"])
    try:
        assert infer_json(server, "mlp", np.ones((2, 4), np.float32)).status_code == 200
        loaded = next(json.loads(l) for l in server.log if '"model loaded"' in l)
        assert loaded["intra_threads"] == 1 and loaded["spinning"] is False, loaded
        tasks = f"/proc/{server.proc.pid}/task"
        allowed = {}
        for tid in os.listdir(tasks):
            with open(f"{tasks}/{tid}/status") as f:
                status = dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)
            allowed[f"{status['Name']} ({tid})"] = status["Cpus_allowed_list"]
        assert len(allowed) >= 3 and set(allowed.values()) == {"0"}, allowed
    finally:
        server.stop()


def test_one_cpu_gets_a_one_thread_runtime_that_serves_concurrent_clients():
    """Under `taskset -c 0` the server runs tokio's one-thread runtime (the "serving" line says
    `current_thread`; `TOKIO_WORKER_THREADS` overrides the count), and with a half-sent request
    left open beside them, 96 concurrent HTTP requests and 32 gRPC ones each get their own answer."""
    import json
    import socket

    import tritonclient.grpc as grpcclient

    argv = ["taskset", "-c", "0", *Server.argv_for(os.path.join(MODELS, "mlp.onnx"))]
    server = Service(argv)
    forced = Service(argv, env={**os.environ, "TOKIO_WORKER_THREADS": "2"})
    try:
        def runtime(s):
            serving = next(json.loads(l) for l in s.log if '"message":"serving"' in l)
            return serving["runtime"], serving["runtime_threads"]

        assert runtime(server) == ("current_thread", 1) and runtime(forced) == ("multi_thread", 2)
        for bad in ("0", "two", " 2"):
            p = subprocess.run(argv, env={**os.environ, "TOKIO_WORKER_THREADS": bad}, capture_output=True, text=True, timeout=60)
            assert p.returncode == 1 and f"TOKIO_WORKER_THREADS={bad!r}".replace("'", '"') in p.stderr, p.stderr
        host, port = server.address.rsplit(":", 1)
        idle = socket.create_connection((host, int(port)), timeout=10)
        idle.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"inp")
        sess = ort.InferenceSession(os.path.join(MODELS, "mlp.onnx"))
        rng = np.random.default_rng(7)
        inputs = [rng.standard_normal((1 + i % 3, 4)).astype(np.float32) for i in range(128)]
        grpc_client = grpcclient.InferenceServerClient(server.grpc_address)

        def call(k):
            x = inputs[k]
            if k % 4 == 3:
                feed = grpcclient.InferInput("x", list(x.shape), "FP32")
                feed.set_data_from_numpy(x)
                return grpc_client.infer("mlp", [feed]).as_numpy("probs")
            r = infer_json(server, "mlp", x)
            assert r.status_code == 200, r.text
            return np.array(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(x.shape[0], 3)

        with ThreadPoolExecutor(32) as pool:
            results = list(pool.map(call, range(len(inputs))))
        for x, got in zip(inputs, results):
            np.testing.assert_allclose(got, sess.run(["probs"], {"x": x})[0], rtol=1e-6, atol=1e-7)
        assert metric(server, "nv_inference_request_success", "mlp") == len(inputs)
        # The half-sent request is still waiting for its body, not answered or dropped.
        idle.settimeout(0.2)
        with pytest.raises(socket.timeout):
            idle.recv(1)
        idle.close()
    finally:
        server.stop()
        forced.stop()


def test_the_memory_arena_is_on_for_inputs_fixed_past_dim0_unless_configured(start):
    """Unset, ONNX Runtime's arena serves a model whose inputs are fixed past dim 0 (one set of
    buffers reused) and not one with other dynamic dims (its arena would keep every size seen);
    the flag decides either way."""
    import json

    def arena(server):
        return next(json.loads(l) for l in server.log if '"model loaded"' in l)["memory_arena"]

    fixed = start("mlp")
    dynamic = start("multi_io")
    off = start("mlp", "--memory-arena", "false")
    on = start("multi_io", "--memory-arena", "true")
    assert (arena(fixed), arena(dynamic), arena(off), arena(on)) == (True, False, False, True)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for server in (fixed, off):
        r = infer_json(server, "mlp", x)
        assert r.status_code == 200, r.text
    assert infer_json(fixed, "mlp", x).json()["outputs"] == infer_json(off, "mlp", x).json()["outputs"]


def test_failed_warm_up_warns_and_does_not_block_readiness(start, tmp_path):
    import json

    x = {"inputs": [{"name": "x", "shape": [4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    server = start("odd_length")  # warm-up with n = 1 cannot reshape to [2, -1]
    warnings = [json.loads(l) for l in server.log if "warm-up failed" in l]
    assert warnings and warnings[0]["level"] == "WARN" and warnings[0]["model"] == "odd_length"
    r = requests.post(f"{server.url}/v2/models/odd_length/infer", json=x, timeout=5)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 2]
    # Configured sizes for symbolic dims make the same warm-up succeed.
    config = tmp_path / "warmup.toml"
    config.write_text("[warmup]\ndims = { n = 4 }\n")
    server = start("odd_length", "--config", str(config))
    assert any("warm-up done" in l for l in server.log) and not any("warm-up failed" in l for l in server.log)


def test_warm_up_reports_outputs_that_break_their_declared_dims(start):
    """lying_shape.onnx declares `y: float[batch, 1]` and produces `[batch, 3]`: V2 serves it
    (answers carry the real shape) and the start log says what a typed service must declare."""
    server = start("lying_shape")
    r = requests.post(f"{server.url}/v2/models/lying_shape/infer", json={"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": [1, 0, 0, 0, 0, 0, 0, 2]}]}, timeout=5)
    assert r.status_code == 200 and r.json()["outputs"][0]["shape"] == [2, 3], r.text
    assert r.json()["outputs"][0]["data"] == [0, 1, 2, 18, 20, 22]
    log = "".join(server.log)
    assert 'output \\"y\\" is declared [batch, 1] but warm-up produced [1, 3]' in log, log[-2000:]
    assert 'dims(\\"y\\" = [\\"batch\\", 3])' in log
