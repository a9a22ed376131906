"""OpenTelemetry traces against a real OTLP receiver: a small collector built here on the official
OTLP protobuf definitions (PyPI `opentelemetry-proto`), over OTLP/HTTP (protobuf bodies) and
OTLP/gRPC. The server is configured only through the standard OTEL_* variables."""

import json
import os
import secrets
import socket
import ssl
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from conftest import MODELS, TARGET, Server, Service, free_port, metrics

MLP = os.path.join(MODELS, "mlp.onnx")


class Receiver:
    """An OTLP trace receiver on a free loopback port: `http/protobuf` (POST /v1/traces) or
    `grpc` (TraceService/Export). Keeps every span with its resource's attributes."""

    def __init__(self, protocol, pki=None):
        """With `pki` (the suite's CA directory): TLS with the server certificate, and client
        certificates required (mutual TLS)."""
        self.protocol = protocol
        self.spans = []
        self.requests = 0
        self.cond = threading.Condition()
        if protocol == "grpc":
            self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
            receiver = self

            class Service(trace_service_pb2_grpc.TraceServiceServicer):
                def Export(self, request, context):
                    receiver.take(request)
                    return trace_service_pb2.ExportTraceServiceResponse()

            trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Service(), self.server)
            if pki:
                read = lambda name: (pki / name).read_bytes()
                credentials = grpc.ssl_server_credentials([(read("server.key"), read("server.pem"))], root_certificates=read("ca.pem"), require_client_auth=True)
                self.port = self.server.add_secure_port("127.0.0.1:0", credentials)
            else:
                self.port = self.server.add_insecure_port("127.0.0.1:0")
            self.server.start()
        else:
            receiver = self

            class Handler(BaseHTTPRequestHandler):
                def do_POST(self):
                    body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                    if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                        self.send_response(400)
                        self.end_headers()
                        return
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    receiver.take(request)
                    out = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/x-protobuf")
                    self.send_header("Content-Length", str(len(out)))
                    self.end_headers()
                    self.wfile.write(out)

                def log_message(self, *args):
                    pass

            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            if pki:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                context.load_cert_chain(pki / "server.pem", pki / "server.key")
                context.load_verify_locations(pki / "ca.pem")
                context.verify_mode = ssl.CERT_REQUIRED
                self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.port = self.server.server_address[1]
            threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.endpoint = f"{'https' if pki else 'http'}://127.0.0.1:{self.port}"

    def take(self, request):
        with self.cond:
            self.requests += 1
            for rs in request.resource_spans:
                resource = {a.key: a.value.string_value for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        self.spans.append((resource, span))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout=30):
        """The spans matching `predicate`, once there is one (fails after `timeout`)."""
        deadline = time.time() + timeout
        with self.cond:
            while True:
                found = [(r, s) for r, s in self.spans if predicate(s)]
                if found or time.time() > deadline:
                    assert found, f"no matching span in {len(self.spans)} received: {[s.name for _, s in self.spans]}"
                    return found
                self.cond.wait(timeout=0.5)

    def stop(self):
        if self.protocol == "grpc":
            self.server.stop(0)
        else:
            self.server.shutdown()


@pytest.fixture
def receiver():
    started = []

    def go(protocol, pki=None):
        r = Receiver(protocol, pki)
        started.append(r)
        return r

    yield go
    for r in started:
        r.stop()


def traced_server(receiver, *extra_env):
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": receiver.protocol,
           "OTEL_SERVICE_NAME": "tracing-test", "OTEL_BSP_SCHEDULE_DELAY": "100", "RUST_LOG": "info,nimify::server=debug,nimify::grpc=debug"}
    env.update(dict(extra_env))
    return Server(MLP, env=env)


def wait_for_lost_spans(server, failure):
    """Waits until /metrics counts spans lost with a failed export (fails with `failure`)."""
    deadline = time.time() + 30
    while metrics(server).get(("nimify_trace_spans_total", '{outcome="failed"}'), 0) == 0:
        assert time.time() < deadline, failure
        time.sleep(0.1)


def new_parent(sampled=True):
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}"


def infer_body():
    x = np.ones((1, 4), dtype=np.float32)
    return {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": x.flatten().tolist()}]}


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value if v.HasField("string_value") else v.int_value if v.HasField("int_value") else v.bool_value
    return out


def access_line(server, request_id, timeout=10):
    """The access-log line (JSON) of a request, by its id."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for line in list(server.log):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("request_id") == request_id and event.get("message", "").startswith("request"):
                return event
        time.sleep(0.1)
    raise AssertionError(f"no access-log line for {request_id}: {''.join(server.log[-20:])}")


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_an_http_request_is_a_server_span_under_the_callers_trace(receiver, protocol):
    rec = receiver(protocol)
    server = traced_server(rec)
    try:
        trace_id, parent_id, traceparent = new_parent()
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(),
                          headers={"traceparent": traceparent, "tracestate": "vendor=x", "x-request-id": "traced-1"}, timeout=10)
        assert r.status_code == 200, r.text
        # The answer names the server's span in the caller's trace.
        version, answered_trace, answered_span, flags = r.headers["traceparent"].split("-")
        assert (version, answered_trace, flags) == ("00", trace_id, "01") and answered_span != parent_id
        assert r.headers.get("tracestate") == "vendor=x"
        [(resource, span)] = rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER)
        assert resource["service.name"] == "tracing-test"
        assert span.name == "POST /v2/models/{model}/infer"
        assert span.parent_span_id.hex() == parent_id and span.span_id.hex() == answered_span
        assert span.kind == span.SPAN_KIND_SERVER
        a = attrs(span)
        assert a["http.request.method"] == "POST" and a["http.route"] == "/v2/models/{model}/infer"
        assert a["http.response.status_code"] == 200 and a["url.path"] == "/v2/models/mlp/infer"
        assert a["nimify.model.name"] == "mlp" and a["request_id"] == "traced-1"
        assert a["http.request.body.size"] == len(r.request.body)
        assert a["client.address"] == "127.0.0.1" and 0 < a["client.port"] < 65536
        # The access log joins the trace.
        line = access_line(server, "traced-1")
        assert (line["trace_id"], line["span_id"]) == (trace_id, answered_span), line
        # A failing request: a 4xx is the client's error, not the server span's.
        trace_id, _, traceparent = new_parent()
        r = requests.post(f"{server.url}/v2/models/nope/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        assert r.status_code == 404
        [(_, span)] = rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER)
        assert attrs(span)["http.response.status_code"] == 404 and span.status.code != span.status.STATUS_CODE_ERROR
        # Without a traceparent the server starts a trace of its own.
        r = requests.get(f"{server.url}/v2/models/mlp", timeout=10)
        own = r.headers["traceparent"].split("-")[1]
        rec.wait_for(lambda s: s.trace_id.hex() == own and s.parent_span_id == b"")
        # What the collector took is counted (once its answer is in; the /metrics requests are
        # traced too, so the count only grows).
        exported = ("nimify_trace_spans_total", '{outcome="exported"}')
        received = len(rec.spans)
        deadline = time.time() + 15
        while metrics(server).get(exported, 0) < received and time.time() < deadline:
            time.sleep(0.05)
        assert received <= metrics(server)[exported] <= len(rec.spans)
        assert metrics(server).get(("nimify_trace_spans_total", '{outcome="failed"}'), 0) == 0
    finally:
        server.stop()


# The exporter's task runs on the server's runtime; on one CPU that runtime has one thread, which
# must still run the task while the exit waits for the last export.
@pytest.mark.parametrize("runtime_threads", ["1", "2"])
def test_the_spans_still_queued_at_exit_are_exported(receiver, runtime_threads):
    rec = receiver("http/protobuf")
    # Batches would go out only after a minute: this span can only leave at the exit.
    server = traced_server(rec, ("OTEL_BSP_SCHEDULE_DELAY", "60000"), ("TOKIO_WORKER_THREADS", runtime_threads))
    trace_id, _, traceparent = new_parent()
    try:
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        assert r.status_code == 200, r.text
        assert not [s for _, s in rec.spans if s.trace_id.hex() == trace_id], "exported before the exit"
    finally:
        assert server.stop() == 0
    rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER, timeout=10)
    assert not [l for l in server.log if "traces not all exported" in l], "".join(server.log[-10:])


def spans_of(rec, trace_id, count, timeout=30):
    """The spans of one trace by name, once `count` of them arrived."""
    deadline = time.time() + timeout
    while True:
        spans = [s for _, s in rec.spans if s.trace_id.hex() == trace_id]
        if len(spans) >= count or time.time() > deadline:
            assert len(spans) >= count, sorted(s.name for s in spans)
            return spans
        time.sleep(0.1)


def test_a_request_shows_decode_queue_run_and_encode_and_a_batch_links_its_requests(receiver):
    rec = receiver("http/protobuf")
    # Requests wait up to 300 ms for each other, so concurrent ones share a run.
    server = traced_server(rec, ("NIMIFY_MAX_QUEUE_DELAY_US", "300000"), ("NIMIFY_MAX_BATCH_SIZE", "8"))
    try:
        trace_id, _, traceparent = new_parent()
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        assert r.status_code == 200
        spans = spans_of(rec, trace_id, 5)
        by_name = {s.name: s for s in spans}
        assert set(by_name) == {"POST /v2/models/{model}/infer", "decode", "queue", "execute", "encode"}, sorted(by_name)
        request = by_name["POST /v2/models/{model}/infer"]
        for name in ("decode", "queue", "execute", "encode"):
            assert by_name[name].parent_span_id == request.span_id, name
        # In time order: decoded, queued, run, encoded.
        assert by_name["decode"].end_time_unix_nano <= by_name["queue"].start_time_unix_nano
        assert by_name["queue"].end_time_unix_nano <= by_name["execute"].start_time_unix_nano + 1_000_000
        assert by_name["execute"].end_time_unix_nano <= by_name["encode"].start_time_unix_nano
        run = by_name["execute"]
        assert [l.span_id for l in run.links] == [request.span_id]
        assert attrs(run)["nimify.batch.size"] == 1 and attrs(run)["nimify.batch.requests"] == 1

        # Four requests at once: one run serves several, linked to each request's span.
        parents = [new_parent() for _ in range(4)]
        with futures.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(),
                                                            headers={"traceparent": p[2]}, timeout=10), parents))
        assert all(a.status_code == 200 for a in answers)
        servers = {}
        runs = []
        for trace_id, _, _ in parents:
            spans = spans_of(rec, trace_id, 3)
            [req] = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
            servers[req.span_id] = trace_id
        runs = [s for _, s in rec.spans if s.name == "execute" and len(s.links) > 1]
        assert runs, "no run served more than one request"
        for run in runs:
            assert attrs(run)["nimify.batch.requests"] == len(run.links) and attrs(run)["nimify.batch.size"] == len(run.links)
            # Each link names a request's span in that request's trace; the run is a child of the first.
            for link in run.links:
                assert servers[link.span_id] == link.trace_id.hex()
            assert run.parent_span_id == run.links[0].span_id and run.trace_id == run.links[0].trace_id
    finally:
        server.stop()


def test_a_typed_pipeline_shows_its_process_and_each_model_it_calls(receiver):
    rec = receiver("grpc")
    binary = os.path.join(TARGET, "debug", "example-pipeline")
    assert os.path.exists(binary), f"{binary} missing: `cargo xtask test` builds the examples"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": rec.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_BSP_SCHEDULE_DELAY": "100"}
    service = Service([binary, "--host", "127.0.0.1", "--port", "0"], env=env)
    try:
        trace_id, _, traceparent = new_parent()
        r = requests.post(f"{service.url}/v1/models/pipeline/predict", json={"rows": [[1.0, 2.0, 3.0, 4.0]]},
                          headers={"traceparent": traceparent}, timeout=10)
        assert r.status_code == 200, r.text
        spans = spans_of(rec, trace_id, 8)
        [request] = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
        assert request.name == "POST /v1/models/pipeline/predict"
        [process] = [s for s in spans if s.name == "process"]
        assert process.parent_span_id == request.span_id and attrs(process)["nimify.endpoint"] == "pipeline"
        infers = sorted((s for s in spans if s.name == "infer"), key=lambda s: s.start_time_unix_nano)
        assert [attrs(s)["nimify.model.name"] for s in infers] == ["scaler", "scorer"]
        for call in infers:
            assert call.parent_span_id == process.span_id
            [queue] = [s for s in spans if s.name == "queue" and s.parent_span_id == call.span_id]
            [run] = [s for s in spans if s.name == "execute" and s.parent_span_id == call.span_id]
            assert [l.span_id for l in run.links] == [call.span_id]
    finally:
        service.stop()


def test_a_grpc_call_is_a_server_span_under_the_callers_trace(receiver):
    import tritonclient.grpc as grpcclient

    rec = receiver("grpc")
    server = traced_server(rec)
    try:
        trace_id, parent_id, traceparent = new_parent()
        client = grpcclient.InferenceServerClient(server.grpc_address)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        client.infer("mlp", [x], headers={"traceparent": traceparent})
        [(_, span)] = rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER)
        assert span.name == "inference.GRPCInferenceService/ModelInfer" and span.parent_span_id.hex() == parent_id
        a = attrs(span)
        assert (a["rpc.system"], a["rpc.service"], a["rpc.method"]) == ("grpc", "inference.GRPCInferenceService", "ModelInfer")
        assert a["client.address"] == "127.0.0.1" and 0 < a["client.port"] < 65536
        children = {s.name: s for s in spans_of(rec, trace_id, 5) if s.parent_span_id == span.span_id}
        assert set(children) == {"decode", "queue", "execute", "encode"}, sorted(children)
        # A stream's messages are answered after its handler returned: each is a `message` span
        # of the call, with its own queue and run, in the caller's trace.
        trace_id, parent_id, traceparent = new_parent()
        answers = []
        client.start_stream(callback=lambda result, error: answers.append(error or result), headers={"traceparent": traceparent})
        for i in range(2):
            client.async_stream_infer("mlp", [x], request_id=f"m{i}")
        deadline = time.time() + 10
        while len(answers) < 2 and time.time() < deadline:
            time.sleep(0.05)
        client.stop_stream()
        assert len(answers) == 2 and not [a for a in answers if isinstance(a, Exception)], answers
        # (The two messages may share one run: 1 + 2 x 4 + 1 spans at least.)
        spans = spans_of(rec, trace_id, 1 + 2 * 4 + 1)
        [call] = [s for s in spans if s.kind == s.SPAN_KIND_SERVER]
        assert call.name == "inference.GRPCInferenceService/ModelStreamInfer" and call.parent_span_id.hex() == parent_id
        messages = [s for s in spans if s.name == "message"]
        assert len(messages) == 2 and all(m.parent_span_id == call.span_id for m in messages)
        for m in messages:
            assert {s.name for s in spans if s.parent_span_id == m.span_id} >= {"decode", "queue", "encode"}
        linked = {link.span_id for s in spans if s.name == "execute" for link in s.links}
        assert linked == {m.span_id for m in messages}
    finally:
        server.stop()


def test_ratio_zero_sends_nothing_unless_the_parent_is_sampled(receiver):
    rec = receiver("http/protobuf")
    server = traced_server(rec, ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0"))
    try:
        unsampled = []
        for _ in range(5):
            r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10)
            assert r.status_code == 200
            # Not sampled: the answer still names the trace, flagged not sampled.
            unsampled.append(r.headers["traceparent"].split("-")[1])
            assert r.headers["traceparent"].endswith("-00")
        # A caller's sampled parent is honoured whatever the ratio; a caller's "not sampled" too.
        trace_id, _, traceparent = new_parent(sampled=False)
        requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        unsampled.append(trace_id)
        trace_id, _, traceparent = new_parent(sampled=True)
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        assert r.headers["traceparent"].endswith("-01")
        rec.wait_for(lambda s: s.trace_id.hex() == trace_id)
        # Spans go out in order: had any earlier request been sampled, it would be here by now.
        assert not [s for _, s in rec.spans if s.trace_id.hex() in unsampled]
    finally:
        server.stop()


def test_tracing_off_and_bad_settings(receiver, tmp_path):
    import subprocess

    rec = receiver("http/protobuf")
    # Disabled: no header, nothing sent.
    server = traced_server(rec, ("OTEL_SDK_DISABLED", "true"))
    try:
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": new_parent()[2]}, timeout=10)
        assert r.status_code == 200 and "traceparent" not in r.headers
    finally:
        server.stop()
    time.sleep(0.5)
    assert rec.requests == 0
    # A collector that is not there costs the requests nothing.
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}", "OTEL_BSP_SCHEDULE_DELAY": "50"}
    server = Server(MLP, env=env)
    try:
        for _ in range(20):
            r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10)
            assert r.status_code == 200 and r.headers["traceparent"].endswith("-01")
        # The spans lost are counted.
        wait_for_lost_spans(server, "no failed export counted")
        assert metrics(server).get(("nimify_trace_spans_total", '{outcome="exported"}'), 0) == 0
    finally:
        assert server.stop() == 0
    # A collector that takes the connection and never answers does not hold the exit.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{hang.getsockname()[1]}", "OTEL_BSP_SCHEDULE_DELAY": "50",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "300"}
    server = Server(MLP, env=env)
    try:
        for _ in range(5):
            assert requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10).status_code == 200
        # The export times out (OTEL_EXPORTER_OTLP_TIMEOUT) and its spans are counted lost.
        wait_for_lost_spans(server, "a hung export was not counted")
    finally:
        assert server.stop() == 0, "killed: the exit waited on the collector"
        hang.close()
    # Settings nimify cannot honour stop it at start, naming the variable.
    for var, value, says in (("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json", "OTEL_EXPORTER_OTLP_PROTOCOL=http/json is not supported"),
                             ("OTEL_TRACES_EXPORTER", "zipkin", "OTEL_TRACES_EXPORTER=zipkin is not supported"),
                             ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector.invalid:4318", "is not a URL"),
                             ("OTEL_EXPORTER_OTLP_CLIENT_KEY", "/client.key", "OTEL_EXPORTER_OTLP_CLIENT_KEY is set without its pair")):
        env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": rec.endpoint, var: value}
        p = subprocess.run([*Server.argv_for(MLP)], env=env, capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and says in p.stderr, p.stderr


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_collector_over_mutual_tls(receiver, pki, protocol):
    """An https:// collector that requires client certificates: with the CA and the client's
    certificate and key in the standard variables, spans arrive; without the client's
    certificate the collector refuses them and the loss is counted; a CA file that is not there
    stops the server at start, naming it."""
    rec = receiver(protocol, pki)
    ca = ("OTEL_EXPORTER_OTLP_CERTIFICATE", str(pki / "ca.pem"))
    server = traced_server(rec, ca, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(pki / "client.pem")),
                           ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", str(pki / "client.key")))
    try:
        trace_id, _, traceparent = new_parent()
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        assert r.status_code == 200
        rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER)
    finally:
        assert server.stop() == 0
    server = traced_server(rec, ca)
    try:
        for _ in range(3):
            assert requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10).status_code == 200
        wait_for_lost_spans(server, "a refused export was not counted")
    finally:
        assert server.stop() == 0
    missing = str(pki / "no-such-ca.pem")
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": rec.endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol, "OTEL_EXPORTER_OTLP_CERTIFICATE": missing}
    p = subprocess.run(Server.argv_for(MLP), env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and missing in p.stderr, p.stderr


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_the_config_file_configures_tracing_and_the_environment_wins(receiver, tmp_path, protocol):
    """`[tracing]` in the config file stands for the OTEL_* variables: with only the file, spans
    go to its endpoint under its service name and sampler; a variable that is set wins."""
    rec = receiver(protocol)
    config = tmp_path / "config.toml"
    config.write_text(f'[tracing]\nendpoint = "{rec.endpoint}"\nprotocol = "{protocol}"\nservice_name = "from-file"\n'
                      'sampler = "parentbased_traceidratio"\nsampler_arg = 0.0\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    server = Server(MLP, "--config", str(config), env={**env, "OTEL_BSP_SCHEDULE_DELAY": "100"})
    try:
        # Ratio 0 from the file: a request without a sampled parent is not traced ...
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10)
        assert r.headers["traceparent"].endswith("-00")
        # ... and a sampled parent is, under the file's service name.
        trace_id, _, traceparent = new_parent()
        requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), headers={"traceparent": traceparent}, timeout=10)
        [(resource, _)] = rec.wait_for(lambda s: s.trace_id.hex() == trace_id and s.kind == s.SPAN_KIND_SERVER)
        assert resource["service.name"] == "from-file"
    finally:
        assert server.stop() == 0
    server = Server(MLP, "--config", str(config), env={**env, "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "from-env", "OTEL_TRACES_SAMPLER": "always_on"})
    try:
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=infer_body(), timeout=10)
        own = r.headers["traceparent"].split("-")[1]
        [(resource, _)] = rec.wait_for(lambda s: s.trace_id.hex() == own and s.kind == s.SPAN_KIND_SERVER)
        assert resource["service.name"] == "from-env"
    finally:
        assert server.stop() == 0
    # A bad value in the file stops the server at start, naming the key.
    config.write_text(f'[tracing]\nendpoint = "{rec.endpoint}"\nsampler = "sometimes"\n')
    p = subprocess.run([*Server.argv_for(MLP), "--config", str(config)], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "tracing.sampler=sometimes is not supported" in p.stderr, p.stderr
