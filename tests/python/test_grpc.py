"""The gRPC front end with the official `tritonclient.grpc` and plain grpcio against real
`cargo nimify serve` processes: typed contents, bad requests and their status codes, streaming,
statistics and metrics shared with HTTP, health, reflection, API keys, limits and TLS.

(The element-type matrix over gRPC is in test_triton_matrix.py, mode "grpc".)"""

import json
import os
import queue
import signal
import subprocess
import time

import grpc
import numpy as np
import pytest
import requests
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import MODELS, Server, metric
from test_triton_matrix import assert_same, dtype_feeds, reference

RNG = np.random.default_rng(7)


def stub(server, credentials=None):
    channel = grpc.secure_channel(server.grpc_address, credentials) if credentials else grpc.insecure_channel(server.grpc_address)
    return service_pb2_grpc.GRPCInferenceServiceStub(channel)


def code_of(call):
    """The status code and message `call()` fails with."""
    with pytest.raises(grpc.RpcError) as e:
        call()
    return e.value.code(), e.value.details()


def mlp_request(rows=2, **fields):
    x = RNG.standard_normal((rows, 4)).astype(np.float32)
    req = service_pb2.ModelInferRequest(model_name="mlp", **fields)
    t = req.inputs.add(name="x", datatype="FP32", shape=[rows, 4])
    req.raw_input_contents.append(x.tobytes())
    return req, x


# ---- typed contents -------------------------------------------------------------------------

CONTENTS_FIELD = {
    "FP32": "fp32_contents", "FP64": "fp64_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
    "UINT32": "uint_contents", "UINT64": "uint64_contents", "BOOL": "bool_contents", "BYTES": "bytes_contents",
}


def test_fp16_has_no_typed_field_and_raw_and_typed_do_not_mix(serve):
    """FP16 and BF16 travel raw only, and a request sends every input one way (as Triton
    requires): both refusals say what to do. (Every typed field's decoding, narrow integers'
    range checks included, is unit-tested in runtime/src/grpc/tensors.rs.)"""
    server = serve("dtypes")
    feeds = dtype_feeds(3)
    req = service_pb2.ModelInferRequest(model_name="dtypes", id="typed-1")
    for name, arr in feeds.items():
        datatype = grpcclient.np_to_triton_dtype(arr.dtype)
        t = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        if datatype != "FP16":
            getattr(t.contents, CONTENTS_FIELD[datatype]).extend(arr.flatten().tolist())
    code, message = code_of(lambda: stub(server).ModelInfer(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "in_fp16" in message and "raw_input_contents" in message, message
    req.inputs[2].contents.fp32_contents.extend([1.0] * 6)
    code, message = code_of(lambda: stub(server).ModelInfer(req))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "FP16 has no typed contents field" in message, message
    mixed = service_pb2.ModelInferRequest(model_name="dtypes")
    mixed.CopyFrom(req)
    mixed.raw_input_contents.extend([b""] * len(req.inputs))
    code, message = code_of(lambda: stub(server).ModelInfer(mixed))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "send every input one way" in message, message


def test_typed_contents_answer_like_onnx_runtime(serve):
    server = serve("multi_io")
    feeds = {
        "features": RNG.standard_normal((4, 3)).astype(np.float32),
        "ids": np.array([1, 2, 3, 4], dtype=np.int32),
        "threshold": np.array(0.5, dtype=np.float32),
    }
    req = service_pb2.ModelInferRequest(model_name="multi_io", id="typed-2")
    for name, arr in feeds.items():
        datatype = grpcclient.np_to_triton_dtype(arr.dtype)
        t = req.inputs.add(name=name, datatype=datatype, shape=list(arr.shape))
        getattr(t.contents, CONTENTS_FIELD[datatype]).extend(arr.flatten().tolist())
    response = stub(server).ModelInfer(req)
    assert response.id == "typed-2" and response.model_name == "multi_io" and response.model_version == "1"
    result = grpcclient.InferResult(response)
    for name, want in reference("multi_io", feeds).items():
        assert_same(result.as_numpy(name), want, name)
    strings = serve("strings")
    text = np.array([b"hello", b"", "gr\u00fc\u00dfe".encode()], dtype=object)
    req = service_pb2.ModelInferRequest(model_name="strings")
    req.inputs.add(name="text", datatype="BYTES", shape=[3]).contents.bytes_contents.extend(text.tolist())
    result = grpcclient.InferResult(stub(strings).ModelInfer(req))
    for name, want in reference("strings", {"text": text}).items():
        assert_same(result.as_numpy(name), want, name)


# ---- bad requests ---------------------------------------------------------------------------

def bad_requests():
    """(what, request, code, words the message must hold)."""
    x = np.zeros((2, 4), np.float32)

    def req(model="mlp", **kw):
        return service_pb2.ModelInferRequest(model_name=model, **kw)

    def raw(name="x", datatype="FP32", shape=(2, 4), data=x.tobytes(), model="mlp", **kw):
        """A request with one raw input."""
        r = req(model, **kw)
        r.inputs.add(name=name, datatype=datatype, shape=list(shape))
        r.raw_input_contents.append(data)
        return r

    cases = []
    cases.append(("unknown model", raw(model="nope"), grpc.StatusCode.NOT_FOUND, ["unknown model", "nope", "mlp"]))
    cases.append(("unknown version", raw(model_version="7"), grpc.StatusCode.NOT_FOUND, ["version", "7"]))
    cases.append(("unknown input", raw(name="y"), grpc.StatusCode.INVALID_ARGUMENT, ["unknown input", '"y"']))
    r = req()
    cases.append(("missing input", r, grpc.StatusCode.INVALID_ARGUMENT, ["missing input", '"x"']))
    cases.append(("wrong datatype", raw(datatype="INT32", data=x.astype(np.int32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, ["datatype", "INT32", "FP32"]))
    cases.append(("wrong fixed dim", raw(shape=(2, 5), data=np.zeros((2, 5), np.float32).tobytes()), grpc.StatusCode.INVALID_ARGUMENT, ["dim 1", "5", "4"]))
    cases.append(("shape and raw size disagree", raw(shape=(3, 4)), grpc.StatusCode.INVALID_ARGUMENT, ["32 binary bytes", "needs 12"]))
    cases.append(("negative dim", raw(shape=(2, -4)), grpc.StatusCode.INVALID_ARGUMENT, ["negative dim"]))
    cases.append(("lying huge shape", raw(shape=(2**40, 2**40)), grpc.StatusCode.INVALID_ARGUMENT, ["too large"]))
    r = req()
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    r.raw_input_contents.extend([x.tobytes(), x.tobytes()])
    cases.append(("more raw entries than inputs", r, grpc.StatusCode.INVALID_ARGUMENT, ["raw_input_contents has 2 entries", "1 inputs"]))
    r = req()
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    cases.append(("no data", r, grpc.StatusCode.INVALID_ARGUMENT, ["no data"]))
    r = req()
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.int_contents.extend([1] * 8)
    cases.append(("contents in the wrong field", r, grpc.StatusCode.INVALID_ARGUMENT, ["fp32_contents", "int_contents"]))
    r = req()
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4]).contents.fp32_contents.extend([1.0] * 7)
    cases.append(("too few typed elements", r, grpc.StatusCode.INVALID_ARGUMENT, ["needs 8 elements", "7"]))
    cases.append(("unknown datatype", raw(datatype="FLOAT"), grpc.StatusCode.INVALID_ARGUMENT, ["unknown datatype", "FLOAT"]))
    r = raw()
    r.outputs.add(name="nope")
    cases.append(("unknown output", r, grpc.StatusCode.INVALID_ARGUMENT, ["unknown output", "nope", "probs"]))
    r = raw()
    r.outputs.add(name="probs")
    r.outputs.add(name="probs")
    cases.append(("output asked twice", r, grpc.StatusCode.INVALID_ARGUMENT, ["more than once"]))
    r = req()
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    r.inputs.add(name="x", datatype="FP32", shape=[2, 4])
    r.raw_input_contents.extend([x.tobytes(), x.tobytes()])
    cases.append(("input twice", r, grpc.StatusCode.INVALID_ARGUMENT, ["more than once"]))
    return cases


@pytest.mark.parametrize("case", range(len(bad_requests())))
def test_bad_requests_get_their_status_and_lose_nothing(serve, case):
    what, request, want, words = bad_requests()[case]
    server = serve("mlp")
    failures = metric(server, "nv_inference_request_failure", "mlp")
    code, message = code_of(lambda: stub(server).ModelInfer(request))
    assert code == want, f"{what}: {code} {message}"
    for w in words:
        assert w in message, f"{what}: {w!r} not in {message!r}"
    # A failure about a served model counts as one, as over HTTP; the server still answers.
    if want != grpc.StatusCode.NOT_FOUND:
        assert metric(server, "nv_inference_request_failure", "mlp") == failures + 1, what
    good, _ = mlp_request()
    assert stub(server).ModelInfer(good).outputs


def test_tritonclient_raises_the_servers_message(serve):
    server = serve("mlp")
    c = grpcclient.InferenceServerClient(server.grpc_address)
    i = grpcclient.InferInput("x", [1, 3], "FP32")
    i.set_data_from_numpy(np.zeros((1, 3), np.float32))
    with pytest.raises(InferenceServerException) as e:
        c.infer("mlp", [i])
    assert e.value.status() == "StatusCode.INVALID_ARGUMENT" and "dim 1 is 3" in e.value.message()


def test_unsupported_rpcs_say_so(serve):
    server = serve("mlp")
    s = stub(server)
    for call in (
        lambda: s.SystemSharedMemoryStatus(service_pb2.SystemSharedMemoryStatusRequest()),
        lambda: s.CudaSharedMemoryRegister(service_pb2.CudaSharedMemoryRegisterRequest(name="r")),
        lambda: s.TraceSetting(service_pb2.TraceSettingRequest()),
        lambda: s.LogSettings(service_pb2.LogSettingsRequest()),
    ):
        code, message = code_of(call)
        assert code == grpc.StatusCode.UNIMPLEMENTED and message.startswith("nimify does not support"), message
    # Repository control is served (test_repository.py); on fixed model files it says so.
    code, message = code_of(lambda: s.RepositoryModelLoad(service_pb2.RepositoryModelLoadRequest(model_name="mlp")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs a model repository" in message, message
    index = s.RepositoryIndex(service_pb2.RepositoryIndexRequest())
    assert [(m.name, m.version, m.state) for m in index.models] == [("mlp", "1", "READY")]
    code, message = code_of(lambda: s.RepositoryIndex(service_pb2.RepositoryIndexRequest(repository_name="other")))
    assert code == grpc.StatusCode.NOT_FOUND and 'unknown model repository "other"' in message, message
    channel = grpc.insecure_channel(server.grpc_address)
    code, message = code_of(lambda: channel.unary_unary("/inference.Nope/Call")(b""))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "/inference.Nope/Call" in message


# ---- streaming ------------------------------------------------------------------------------

def test_stream_answers_in_order_with_errors_per_request(serve):
    server = serve("mlp")
    c = grpcclient.InferenceServerClient(server.grpc_address)
    answers = queue.Queue()
    c.start_stream(callback=lambda result, error: answers.put((result, error)))
    sent = []
    try:
        for n in range(12):
            rows = n % 4
            # Request 5 has the wrong width for the model.
            x = RNG.standard_normal((rows, 4 if n != 5 else 5)).astype(np.float32)
            shape = list(x.shape)
            i = grpcclient.InferInput("x", shape, "FP32")
            i._raw_content = x.tobytes()
            c.async_stream_infer("mlp", [i], request_id=f"s{n}")
            sent.append((n, x))
        got = [answers.get(timeout=30) for _ in sent]
    finally:
        c.stop_stream()
    for (n, x), (result, error) in zip(sent, got):
        if n == 5:
            assert result is None and "dim 1" in error.message(), error
            continue
        assert error is None, error
        assert result.get_response().id == f"s{n}"
        np.testing.assert_array_equal(result.as_numpy("probs"), reference("mlp", {"x": x})["probs"])


# ---- shared with HTTP -----------------------------------------------------------------------

def test_metadata_config_and_statistics_match_http(serve):
    server = serve("mlp")
    c = grpcclient.InferenceServerClient(server.grpc_address)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("mlp")
    meta = c.get_server_metadata()
    http_meta = requests.get(f"{server.url}/v2", timeout=5).json()
    assert meta.name == http_meta["name"] and list(meta.extensions) == http_meta["extensions"]
    assert "statistics" in meta.extensions
    md = c.get_model_metadata("mlp", as_json=True)
    assert md["inputs"] == [{"name": "x", "datatype": "FP32", "shape": ["-1", "4"]}]
    config = c.get_model_config("mlp", as_json=True)["config"]
    http_config = requests.get(f"{server.url}/v2/models/mlp/config", timeout=5).json()
    assert config["max_batch_size"] == http_config["max_batch_size"] == 32
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}]
    assert config["instance_group"][0]["kind"] == "KIND_CPU"
    with pytest.raises(InferenceServerException) as e:
        c.get_model_metadata("nope")
    assert e.value.status() == "StatusCode.NOT_FOUND"

    before = c.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    grpc_seconds = metric(server, "nimify_request_duration_seconds_count", "mlp", protocol="grpc")
    http_seconds = metric(server, "nimify_request_duration_seconds_count", "mlp", protocol="http")
    req, _ = mlp_request(rows=3)
    for _ in range(3):
        stub(server).ModelInfer(req)
    after = c.get_inference_statistics("mlp", as_json=True)["model_stats"][0]
    success = lambda s: int(s["inference_stats"]["success"].get("count", 0))
    assert success(after) - success(before) == 3
    assert int(after["inference_count"]) - int(before.get("inference_count", 0)) == 9
    # The latency histogram tells the protocols apart; Triton's counters do not.
    assert metric(server, "nimify_request_duration_seconds_count", "mlp", protocol="grpc") == grpc_seconds + 3
    assert metric(server, "nimify_request_duration_seconds_count", "mlp", protocol="http") == http_seconds
    # The same counters as /metrics and as Triton's HTTP statistics extension.
    http = requests.get(f"{server.url}/v2/models/mlp/stats", timeout=5).json()["model_stats"][0]
    assert http["inference_stats"]["success"]["count"] == metric(server, "nv_inference_request_success", "mlp")
    assert http["inference_count"] == metric(server, "nv_inference_count", "mlp")
    assert http["execution_count"] == metric(server, "nv_inference_exec_count", "mlp")
    assert sum(b["compute_infer"]["count"] for b in http["batch_stats"]) == http["execution_count"]
    everyone = requests.get(f"{server.url}/v2/models/stats", timeout=5).json()["model_stats"]
    assert [m["name"] for m in everyone] == ["mlp"]
    assert requests.get(f"{server.url}/v2/models/nope/stats", timeout=5).status_code == 404


# ---- health and reflection ------------------------------------------------------------------

SERVING, NOT_SERVING = 1, 2


def health(server, service=""):
    """grpc.health.v1.Health/Check, with the two messages encoded by hand (field 1 each)."""
    channel = grpc.insecure_channel(server.grpc_address)
    request = b"\x0a" + bytes([len(service)]) + service.encode() if service else b""
    answer = channel.unary_unary("/grpc.health.v1.Health/Check")(request, timeout=5)
    assert answer[:1] == b"\x08", answer
    return answer[1]


def test_health_follows_readiness_through_shutdown(start):
    server = start("mlp", env={**os.environ, "NIMIFY_SHUTDOWN_DELAY_MS": "5000"})
    assert health(server) == SERVING
    assert health(server, "inference.GRPCInferenceService") == SERVING
    channel = grpc.insecure_channel(server.grpc_address)
    code, _ = code_of(lambda: channel.unary_unary("/grpc.health.v1.Health/Check")(b"\x0a\x04nope", timeout=5))
    assert code == grpc.StatusCode.NOT_FOUND
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.time() + 4
    while time.time() < deadline and health(server) != NOT_SERVING:
        time.sleep(0.05)
    # During the shutdown delay: not serving, readiness false over both protocols, yet inference
    # is still answered (endpoints take a moment to drop the pod).
    assert health(server) == NOT_SERVING
    assert health(server, "inference.GRPCInferenceService") == NOT_SERVING
    assert grpcclient.InferenceServerClient(server.grpc_address).is_server_ready() is False
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 503
    req, _ = mlp_request()
    assert stub(server).ModelInfer(req).outputs
    assert server.proc.wait(timeout=20) == 0


def test_reflection_lists_the_services(serve):
    server = serve("mlp")
    channel = grpc.insecure_channel(server.grpc_address)
    for version in ("v1", "v1alpha"):
        call = channel.stream_stream(f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo")
        # ServerReflectionRequest{list_services: "*"} (field 7).
        answers = list(call(iter([b"\x3a\x01*"]), timeout=5))
        assert len(answers) == 1
        for name in (b"inference.GRPCInferenceService", b"grpc.health.v1.Health"):
            assert name in answers[0], (version, answers[0])


# ---- admission and limits -------------------------------------------------------------------

def test_api_keys_on_grpc(start, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("s3cret\n")
    server = start("mlp", "--api-keys-file", str(keys))
    req, _ = mlp_request()
    s = stub(server)
    code, message = code_of(lambda: s.ModelInfer(req))
    assert code == grpc.StatusCode.UNAUTHENTICATED and "API key" in message
    code, _ = code_of(lambda: s.ModelInfer(req, metadata=[("authorization", "Bearer wrong")]))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: s.ModelMetadata(service_pb2.ModelMetadataRequest(name="mlp")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert s.ModelInfer(req, metadata=[("authorization", "Bearer s3cret")]).outputs
    assert s.ModelInfer(req, metadata=[("x-api-key", "s3cret")]).outputs
    c = grpcclient.InferenceServerClient(server.grpc_address)
    i = grpcclient.InferInput("x", [1, 4], "FP32")
    i.set_data_from_numpy(np.zeros((1, 4), np.float32))
    assert c.infer("mlp", [i], headers={"authorization": "Bearer s3cret"}).as_numpy("probs").shape == (1, 3)
    # Probes stay open, as on HTTP.
    assert health(server) == SERVING
    assert s.ServerReady(service_pb2.ServerReadyRequest()).ready


def slow_request(trips):
    req = service_pb2.ModelInferRequest(model_name="slow")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 8]).contents.fp32_contents.extend([1.0] * 8)
    req.inputs.add(name="trips", datatype="INT64", shape=[1, 1]).contents.int64_contents.append(int(trips))
    return req


def test_in_flight_cap_counts_each_stream_message_and_advises_retry(start):
    """With a cap of one, a stream message that is running holds the place: a unary call and a
    second message are refused at once (the second as an answer on the stream, with its id),
    with gRPC's retry advice. Work is sized by measurement to outlast those calls."""
    from test_timed_work import MARGIN, NO_LIMITS, executions_started, size_work, wait_until

    server = start("slow", "--max-in-flight", "1", *NO_LIMITS)
    s = stub(server)
    began = time.monotonic()
    for _ in range(3):
        s.ModelInfer(slow_request(0))
    call = (time.monotonic() - began) / 3
    work = size_work(server, max(MARGIN * call, 0.5), f"{MARGIN} x a unary call ({call * 1000:.0f} ms)")
    messages = queue.Queue()
    stream = s.ModelStreamInfer(iter(messages.get, None))
    long = slow_request(work.trips)
    long.id = "long"
    before = executions_started(server)
    messages.put(long)
    # The long message holds the place once its execution has begun; it lasts MARGIN times longer
    # than a call.
    wait_until(lambda: executions_started(server) > before, "the long message to start running")
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as e:
        s.ModelInfer(slow_request(0))
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "in flight" in e.value.details()
    refused_within = time.monotonic() - started
    trailers = dict(e.value.trailing_metadata())
    assert trailers.get("grpc-retry-pushback-ms") == "1000" and "grpc-status-details-bin" in trailers
    second = slow_request(0)
    second.id = "second"
    messages.put(second)
    # (Answers keep request order: the second's refusal is delivered after the long one.)
    first_answer, second_answer = next(stream), next(stream)
    assert refused_within + call < work.seconds, f"the refusal took {refused_within:.2f} s against {work}"
    assert first_answer.infer_response.id == "long" and first_answer.error_message == ""
    assert second_answer.infer_response.id == "second" and "in flight" in second_answer.error_message
    messages.put(None)
    assert list(stream) == []
    assert s.ModelInfer(slow_request(0)).outputs
    assert metric(server, "nimify_requests_rejected_total", "slow", reason="in_flight") == 1


def test_message_size_limit_and_deadlines(start):
    server = start("slow", "--grpc-max-message-bytes", "4096", "--batching", "false", "--request-timeout-ms", "300")
    s = stub(server)
    req = service_pb2.ModelInferRequest(model_name="slow")
    req.inputs.add(name="x", datatype="FP32", shape=[1, 2048]).contents.fp32_contents.extend([1.0] * 2048)
    code, message = code_of(lambda: s.ModelInfer(req))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "grpc_max_message_bytes" in message, message
    # The server's request deadline: the run is stopped, answered DEADLINE_EXCEEDED and counted.
    code, message = code_of(lambda: s.ModelInfer(slow_request(10**9), timeout=60))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "300 ms" in message, message
    assert metric(server, "nv_inference_request_failure", "slow") == 1
    assert s.ModelInfer(slow_request(1), timeout=30).outputs


def test_the_clients_grpc_timeout_stops_the_work(start):
    """A client deadline shorter than the server's: the work stops whichever side notices first
    (the server's copy of the deadline, or the client's cancel), and the server is free again."""
    server = start("slow", "--batching", "false", "--request-timeout-ms", "0")
    s = stub(server)
    code, _ = code_of(lambda: s.ModelInfer(slow_request(10**9), timeout=0.5))
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    stopped = lambda: sum(metric(server, "nimify_runs_terminated_total", "slow", reason=r) for r in ("deadline", "disconnect"))
    deadline = time.time() + 20
    while time.time() < deadline and stopped() < 1:
        time.sleep(0.05)
    assert stopped() == 1
    assert s.ModelInfer(slow_request(1), timeout=30).outputs


def test_grpc_off_and_port_clash_are_clear(start):
    server = start("mlp", "--no-grpc")
    assert server.grpc_address == "off"
    assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
    taken = Server(os.path.join(MODELS, "mlp.onnx"))
    try:
        port = taken.grpc_address.rsplit(":", 1)[1]
        r = subprocess.run([*Server.argv_for(os.path.join(MODELS, "mlp.onnx")), "--grpc-port", port],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and f"cannot listen for gRPC on 127.0.0.1:{port}" in r.stderr and "--grpc-port" in r.stderr, r.stderr
    finally:
        taken.stop()


# ---- TLS ------------------------------------------------------------------------------------

def tls_server(pki, *extra):
    flags = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"), *extra]
    cert = (str(pki / "client.pem"), str(pki / "client.key"))
    return Server(os.path.join(MODELS, "mlp.onnx"), *flags, scheme="https", verify=str(pki / "ca.pem"), cert=cert)


def test_tls_on_both_ports_with_tritonclient(pki):
    import tritonclient.http as httpclient

    server = tls_server(pki)
    try:
        x = np.ones((1, 4), np.float32)
        c = grpcclient.InferenceServerClient(server.grpc_address, ssl=True, root_certificates=str(pki / "ca.pem"))
        i = grpcclient.InferInput("x", [1, 4], "FP32")
        i.set_data_from_numpy(x)
        want = reference("mlp", {"x": x})["probs"]
        np.testing.assert_array_equal(c.infer("mlp", [i]).as_numpy("probs"), want)
        import gevent.ssl

        h = httpclient.InferenceServerClient(
            server.address, ssl=True, ssl_context_factory=lambda: gevent.ssl.create_default_context(cafile=str(pki / "ca.pem")))
        hi = httpclient.InferInput("x", [1, 4], "FP32")
        hi.set_data_from_numpy(x)
        np.testing.assert_array_equal(h.infer("mlp", [hi]).as_numpy("probs"), want)
        # Plain text on a TLS port gets nowhere; a client that does not trust the CA neither.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(f"http://{server.address}/v2/health/ready", timeout=5)
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/v2/health/ready", timeout=5)
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_mutual_tls_refuses_clients_without_a_certificate(pki):
    server = tls_server(pki, "--tls-client-ca", str(pki / "ca.pem"))
    try:
        ca = (pki / "ca.pem").read_bytes()
        bare = grpc.ssl_channel_credentials(root_certificates=ca)
        code, _ = code_of(lambda: stub(server, bare).ServerLive(service_pb2.ServerLiveRequest(), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(f"{server.url}/v2/health/live", timeout=5, verify=str(pki / "ca.pem"))
        c = grpcclient.InferenceServerClient(
            server.grpc_address, ssl=True, root_certificates=str(pki / "ca.pem"),
            private_key=str(pki / "client.key"), certificate_chain=str(pki / "client.pem"))
        assert c.is_server_live()
        cert = (str(pki / "client.pem"), str(pki / "client.key"))
        assert requests.get(f"{server.url}/v2/health/live", timeout=5, verify=str(pki / "ca.pem"), cert=cert).status_code == 200
    finally:
        server.stop()


def test_tls_settings_errors_are_clear(tmp_path, pki):
    cases = [
        (["--tls-cert", str(pki / "server.pem")], "tls_cert and tls_key go together"),
        (["--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(pki / "server.key")], "missing.pem"),
        (["--tls-cert", str(pki / "server.key"), "--tls-key", str(pki / "server.key")], "holds no PEM certificate"),
        (["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "client.key")], "do not make a usable pair"),
        (["--tls-client-ca", str(pki / "ca.pem")], "tls_client_ca needs tls_cert"),
    ]
    for flags, words in cases:
        r = subprocess.run([*Server.argv_for(os.path.join(MODELS, "mlp.onnx")), *flags], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and words in r.stderr, (flags, r.stderr)


# ---- warm-up --------------------------------------------------------------------------------

def test_health_is_not_serving_while_the_models_warm_up(start, tmp_path):
    """The ports open before the models load: during a warm-up made long on purpose (a warm-up
    request for the slow model, sized by measurement against this client's health check), gRPC
    health is NOT_SERVING, HTTP readiness 503 and inference UNAVAILABLE "starting"; then the
    same process serves."""
    from test_timed_work import MARGIN, NO_LIMITS, size_work, work_body

    control = start("slow", *NO_LIMITS)
    began = time.monotonic()
    for _ in range(5):
        assert health(control) == SERVING
        requests.get(f"{control.url}/v2/health/ready", timeout=5)
    probing = (time.monotonic() - began) / 5
    work = size_work(control, max(MARGIN * probing, 1.0), f"{MARGIN} x a health check ({probing * 1000:.0f} ms)")
    warmup = tmp_path / "warmup.json"
    warmup.write_text(json.dumps(work_body(work.trips)))

    argv = [*Server.argv_for(os.path.join(MODELS, "slow.onnx")), *NO_LIMITS, "--warmup-request", str(warmup)]
    proc = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True, env={**os.environ, "NIMIFY_GRPC_PORT": "0", "NIMIFY_SHUTDOWN_DELAY_MS": "0"})
    try:
        line = json.loads(proc.stderr.readline())
        assert line["message"].startswith("listening; loading"), line
        loading = type("Loading", (), {"grpc_address": line["grpc_address"], "url": f"http://{line['address']}"})()
        assert health(loading) == NOT_SERVING
        assert requests.get(f"{loading.url}/v2/health/ready", timeout=5).status_code == 503
        assert requests.get(f"{loading.url}/v2/health/live", timeout=5).status_code == 200
        code, message = code_of(lambda: stub(loading).ModelInfer(service_pb2.ModelInferRequest(model_name="slow"), timeout=5))
        assert code == grpc.StatusCode.UNAVAILABLE and "starting" in message, message
        assert stub(loading).ModelReady(service_pb2.ModelReadyRequest(name="slow"), timeout=5).ready is False
        code, message = code_of(lambda: list(stub(loading).ModelStreamInfer(iter([]), timeout=5)))
        assert code == grpc.StatusCode.UNAVAILABLE and "starting" in message, message
        log = []
        deadline = time.time() + 120
        while time.time() < deadline:
            text = proc.stderr.readline()
            assert text, "".join(log)
            log.append(text)
            if '"message":"serving"' in text:
                break
        assert any('"warm-up done"' in l for l in log), "".join(log)
        serving = json.loads(log[-1])
        assert serving["grpc_address"] == line["grpc_address"] and serving["address"] == line["address"]
        assert health(loading) == SERVING
        assert requests.get(f"{loading.url}/v2/health/ready", timeout=5).status_code == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) == 0


def test_a_warmup_request_that_does_not_fit_is_refused_at_start(tmp_path):
    bad = tmp_path / "warmup.json"
    for body, words in (
        ("{not json", "malformed inference request JSON"),
        (json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]}), "dim 1 is 3"),
    ):
        bad.write_text(body)
        r = subprocess.run([*Server.argv_for(os.path.join(MODELS, "mlp.onnx")), "--warmup-request", str(bad)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
        assert r.returncode == 1 and "warm-up request" in r.stderr and words in r.stderr, r.stderr
    r = subprocess.run([*Server.argv_for(os.path.join(MODELS, "mlp.onnx")), "--warmup-request", str(tmp_path / "missing.json")],
                       capture_output=True, text=True, timeout=60, env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
    assert r.returncode == 1 and "missing.json: cannot read it" in r.stderr, r.stderr


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(serve, algorithm):
    server = serve("mlp")
    c = grpcclient.InferenceServerClient(server.grpc_address)
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    i = grpcclient.InferInput("x", [3, 4], "FP32")
    i.set_data_from_numpy(x)
    got = c.infer("mlp", [i], compression_algorithm=algorithm).as_numpy("probs")
    np.testing.assert_array_equal(got, reference("mlp", {"x": x})["probs"])


def test_sigterm_mid_stream_answers_the_running_message_and_ends_every_stream(start):
    """SIGTERM while one stream runs a long message and another sits idle: the running message
    is answered, both streams end with OK (no new messages are taken while draining), and the
    process exits 0 as soon as the work is done, not at the drain timeout."""
    from test_timed_work import NO_LIMITS, executions_started, size_work, wait_until

    server = start("slow", *NO_LIMITS)
    work = size_work(server, 1.0, "the SIGTERM sent 0.3 s into it")
    s = stub(server)
    idle_messages, busy_messages = queue.Queue(), queue.Queue()
    idle = s.ModelStreamInfer(iter(idle_messages.get, None))
    busy = s.ModelStreamInfer(iter(busy_messages.get, None))
    long = slow_request(work.trips)
    long.id = "long"
    before = executions_started(server)
    busy_messages.put(long)
    wait_until(lambda: executions_started(server) > before, "the long message to start running")
    signalled = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    answer = next(busy)
    assert answer.infer_response.id == "long" and answer.error_message == "", answer.error_message
    assert list(busy) == [] and list(idle) == []
    assert server.proc.wait(timeout=60) == 0
    took = time.monotonic() - signalled
    # The drain timeout is 300 s (NO_LIMITS): exiting within the work's own time shows the
    # streams ended instead of holding the drain open.
    assert took < work.seconds + 10, f"exited {took:.1f} s after SIGTERM against {work}"


def test_a_stream_cancelled_mid_message_still_audits_the_message(start, tmp_path):
    """The client cancels its stream while a message runs: the message still gets its audit line,
    with CANCELLED (1), its model and its place; the server goes on serving."""
    from test_timed_work import NO_LIMITS, executions_started, size_work, wait_until

    audit = tmp_path / "audit.log"
    server = start("slow", "--audit-log", str(audit), *NO_LIMITS)
    work = size_work(server, 2.0, "a cancel sent once the message runs")
    messages = queue.Queue()
    stream = stub(server).ModelStreamInfer(iter(messages.get, None), metadata=[("x-request-id", "cancelled-stream")])
    before = executions_started(server)
    messages.put(slow_request(work.trips))
    wait_until(lambda: executions_started(server) > before, "the message to start running")
    stream.cancel()

    def message_lines():
        lines = [json.loads(l) for l in audit.read_text().splitlines()] if audit.exists() else []
        return [l for l in lines if l["request_id"] == "cancelled-stream" and "message" in l]

    wait_until(lambda: message_lines(), "the cancelled message's audit line", timeout=work.seconds + 30)
    [line] = message_lines()
    assert (line["message"], line["model"], line["status"], line["outcome"]) == (1, "slow", 1, "client_error"), line
    assert stub(server).ModelInfer(slow_request(0)).outputs
