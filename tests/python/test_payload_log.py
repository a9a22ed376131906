"""Payload logging against a loopback sink: sampled request and response bodies arrive as
CloudEvents (HTTP binary mode), capped in size; a sink that is down or never answers costs the
requests nothing, and what it loses is counted."""

import json
import os
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from conftest import MODELS, Server, free_port, metrics

MLP = os.path.join(MODELS, "mlp.onnx")


class Sink:
    """An HTTP server keeping every event (headers, body)."""

    def __init__(self, port=0, pki=None):
        """With `pki` (the suite's CA directory), over TLS with the server certificate."""
        self.events = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                sink.events.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        if pki:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(pki / "server.pem", pki / "server.key")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if pki else 'http'}://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count, timeout=15):
        deadline = time.time() + timeout
        while len(self.events) < count and time.time() < deadline:
            time.sleep(0.05)
        assert len(self.events) >= count, [h.get("ce-type") for h, _ in self.events]
        return self.events

    def stop(self):
        self.server.shutdown()


def body(value=1.0):
    return json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [value] * 4}]}).encode()


def infer(server, data, request_id):
    return requests.post(f"{server.url}/v2/models/mlp/infer", data=data, headers={"Content-Type": "application/json", "x-request-id": request_id}, timeout=10)


def test_events_carry_the_bodies_as_cloudevents(tmp_path):
    sink = Sink()
    server = Server(MLP, "--payload-log-url", sink.url)
    try:
        sent = body(2.0)
        r = infer(server, sent, "pl-1")
        assert r.status_code == 200
        events = sink.wait_for(2)
        by_type = {h["ce-type"]: (h, b) for h, b in events}
        assert set(by_type) == {"io.nimify.inference.request", "io.nimify.inference.response"}
        for h, _ in events:
            assert (h["ce-specversion"], h["ce-id"], h["ce-source"], h["ce-nimifymodel"]) == ("1.0", "pl-1", "/models/mlp", "mlp")
            assert h["ce-time"].endswith("Z") and "ce-nimifytruncated" not in h
        h, b = by_type["io.nimify.inference.request"]
        assert b == sent and h["content-type"] == "application/json" and h["ce-nimifysize"] == str(len(sent))
        h, b = by_type["io.nimify.inference.response"]
        assert b == r.content and json.loads(b)["outputs"]
        # Health, metadata and metrics are not inference: nothing is sent for them.
        requests.get(f"{server.url}/v2/models/mlp", timeout=10)
        requests.get(f"{server.url}/v2/health/ready", timeout=10)
        infer(server, body(), "pl-2")
        sink.wait_for(4)
        time.sleep(0.3)
        assert len(sink.events) == 4 and {h["ce-id"] for h, _ in sink.events} == {"pl-1", "pl-2"}
        assert metrics(server)[("nimify_payload_log_sent_total", "")] == 4
    finally:
        server.stop()
        sink.stop()


def test_sampling_modes_and_the_size_cap(tmp_path):
    sink = Sink()
    config = tmp_path / "config.toml"
    config.write_text(f'[payload_log]\nurl = "{sink.url}"\nmode = "request"\nsample_ratio = 0.5\nmax_bytes = 16\n')
    server = Server(MLP, "--config", str(config))
    try:
        for i in range(10):
            assert infer(server, body(float(i)), f"s-{i}").status_code == 200
        events = sink.wait_for(5)
        time.sleep(0.3)
        assert len(sink.events) == 5, "half of ten requests, requests only"
        for h, b in events:
            assert h["ce-type"] == "io.nimify.inference.request"
            assert len(b) == 16 and h["ce-nimifytruncated"] == "true" and int(h["ce-nimifysize"]) == len(body(0.0))
    finally:
        server.stop()
        sink.stop()


def test_a_sink_that_is_down_or_never_answers_costs_the_requests_nothing(tmp_path):
    # Down: nothing listens there. Then it comes up, and once the pause after the failures is
    # over (at most 10 s), events arrive again.
    port = free_port()
    server = Server(MLP, "--payload-log-url", f"http://127.0.0.1:{port}/events")
    sink = None
    try:
        for i in range(5):
            assert infer(server, body(), f"down-{i}").status_code == 200
        deadline = time.time() + 15
        while metrics(server).get(("nimify_payload_log_dropped_total", '{reason="sink_error"}'), 0) < 10 and time.time() < deadline:
            time.sleep(0.1)
        assert metrics(server)[("nimify_payload_log_dropped_total", '{reason="sink_error"}')] == 10
        assert any("payload log sink" in line for line in server.log)
        sink = Sink(port)
        deadline = time.time() + 30
        while not sink.events:
            assert time.time() < deadline, "the sink came back and got nothing"
            assert infer(server, body(), "back").status_code == 200
            time.sleep(0.2)
        assert {h["ce-id"] for h, _ in sink.events} == {"back"}
    finally:
        assert server.stop() == 0
        if sink:
            sink.stop()
    # Never answers: it accepts the connection and reads nothing. The queue (2 events) fills
    # while the sender waits on the first; every request is still answered.
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    config = tmp_path / "config.toml"
    config.write_text(f'[payload_log]\nurl = "http://127.0.0.1:{hang.getsockname()[1]}/events"\nqueue_capacity = 2\n')
    server = Server(MLP, "--config", str(config))
    try:
        for i in range(20):
            assert infer(server, body(), f"hang-{i}").status_code == 200
        dropped = metrics(server)[("nimify_payload_log_dropped_total", '{reason="queue_full"}')]
        assert dropped >= 40 - 2 - 1, dropped
    finally:
        assert server.stop() == 0
        hang.close()


def test_a_body_over_the_limit_is_still_413_and_not_logged(tmp_path):
    sink = Sink()
    server = Server(MLP, "--payload-log-url", sink.url, "--max-body-bytes", "150")
    try:
        r = infer(server, body() + b" " * 100, "big-1")
        assert r.status_code == 413, r.text
        assert infer(server, body(), "small-1").status_code == 200
        sink.wait_for(2)
        time.sleep(0.3)
        assert {h["ce-id"] for h, _ in sink.events} == {"small-1"}
    finally:
        server.stop()
        sink.stop()


def test_an_https_sink_is_checked_against_the_system_roots(pki):
    """The sink's certificate must chain to a root the system trusts (SSL_CERT_FILE here): with
    the suite's CA there, events arrive; with another root, the sink is not trusted and its
    events are dropped and counted; with no roots at all, the server does not start."""
    sink = Sink(pki=pki)
    server = Server(MLP, "--payload-log-url", sink.url, env={**os.environ, "SSL_CERT_FILE": str(pki / "ca.pem")})
    try:
        assert infer(server, body(), "tls-1").status_code == 200
        events = sink.wait_for(2)
        assert {h["ce-id"] for h, _ in events} == {"tls-1"}
    finally:
        server.stop()
    other = str(pki / "client.pem")  # a certificate the sink's does not chain to
    server = Server(MLP, "--payload-log-url", sink.url, env={**os.environ, "SSL_CERT_FILE": other})
    try:
        assert infer(server, body(), "tls-2").status_code == 200
        deadline = time.time() + 15
        while metrics(server).get(("nimify_payload_log_dropped_total", '{reason="sink_error"}'), 0) < 2:
            assert time.time() < deadline, "an untrusted sink's events were not counted"
            time.sleep(0.1)
        assert len(sink.events) == 2
    finally:
        server.stop()
        sink.stop()
    env = {k: v for k, v in os.environ.items() if k != "SSL_CERT_DIR"}
    env["SSL_CERT_FILE"] = str(pki / "missing.pem")
    p = subprocess.run([*Server.argv_for(MLP), "--payload-log-url", sink.url], env=env, capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "no trusted root certificates" in p.stderr, p.stderr


def test_settings_the_logger_cannot_honour_stop_the_server_at_start(tmp_path):
    for flags, says in ((["--payload-log-url", "ftp://sink.invalid/events"], "is not an http:// or https:// URL"),
                        (["--payload-log-url", "http://"], "is not an http:// or https:// URL"),
                        (["--payload-log-url", "http://127.0.0.1:9/", "--payload-log-sample-ratio", "1.5"], "sample_ratio must be between 0 and 1")):
        p = subprocess.run([*Server.argv_for(MLP), *flags], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1 and says in p.stderr, p.stderr


def test_grpc_inference_is_logged_as_protobuf_messages():
    """ModelInfer and each ModelStreamInfer message: the request and answer messages as sent and
    received, decodable with the service's own definitions; stream messages get ids of their own."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    from tritonclient.grpc import service_pb2

    sink = Sink()
    server = Server(MLP, "--payload-log-url", sink.url)
    try:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        data = np.arange(4, dtype=np.float32).reshape(1, 4)
        x.set_data_from_numpy(data)
        result = client.infer("mlp", [x], request_id="unary", headers={"x-request-id": "g-1"})
        events = sink.wait_for(2)
        by_type = {h["ce-type"]: (h, b) for h, b in events}
        h, b = by_type["io.nimify.inference.request"]
        assert h["ce-id"] == "g-1" and h["ce-source"] == "/models/mlp" and h["ce-specversion"] == "1.0"
        assert h["content-type"] == 'application/x-protobuf; messageType="inference.ModelInferRequest"'
        request = service_pb2.ModelInferRequest.FromString(b)
        assert (request.model_name, request.id, request.inputs[0].name) == ("mlp", "unary", "x")
        assert request.raw_input_contents[0] == data.tobytes()
        h, b = by_type["io.nimify.inference.response"]
        assert h["ce-id"] == "g-1" and h["content-type"] == 'application/x-protobuf; messageType="inference.ModelInferResponse"'
        response = service_pb2.ModelInferResponse.FromString(b)
        assert response.id == "unary" and response.raw_output_contents[0] == result.as_numpy("probs").tobytes()

        sink.events.clear()
        answers = []
        client.start_stream(callback=lambda result, error: answers.append(error), headers={"x-request-id": "g-2"})
        client.async_stream_infer("mlp", [x], request_id="a")
        client.async_stream_infer("mlp", [x], request_id="b")
        client.async_stream_infer("nope", [x], request_id="c")
        client.stop_stream()
        assert answers[:2] == [None, None] and answers[2] is not None
        events = sink.wait_for(4)
        time.sleep(0.3)
        # Two answered messages: a request and a response event each; the unknown model, none.
        got = sorted((h["ce-id"], h["ce-type"].rsplit(".", 1)[1]) for h, _ in sink.events)
        assert got == [("g-2/1", "request"), ("g-2/1", "response"), ("g-2/2", "request"), ("g-2/2", "response")], got
        ids = {h["ce-id"]: service_pb2.ModelInferRequest.FromString(b).id for h, b in sink.events if h["ce-type"].endswith("request")}
        assert ids == {"g-2/1": "a", "g-2/2": "b"}
    finally:
        server.stop()
        sink.stop()


def test_queued_events_are_sent_at_exit_within_a_bound():
    """SIGTERM with events still queued for a slow sink: they are all sent before the process
    exits. With a sink that never answers, the exit waits at most 5 s for it and says what was
    lost."""
    sink = Sink()
    handler = sink.server.RequestHandlerClass
    take = handler.do_POST
    handler.do_POST = lambda self: (time.sleep(0.2), take(self))
    server = Server(MLP, "--payload-log-url", sink.url)
    try:
        for i in range(5):
            assert infer(server, body(), f"exit-{i}").status_code == 200
        assert len(sink.events) < 10, "the sink took everything before the signal: nothing was tested"
    finally:
        assert server.stop() == 0
        sink.stop()
    assert sorted(h["ce-id"] for h, _ in sink.events) == sorted(f"exit-{i}" for i in range(5) for _ in range(2))
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    server = Server(MLP, "--payload-log-url", f"http://127.0.0.1:{hang.getsockname()[1]}/events")
    try:
        for i in range(3):
            assert infer(server, body(), f"hang-{i}").status_code == 200
        started = time.monotonic()
        assert server.stop() == 0, "killed: the exit waited on the sink"
        assert time.monotonic() - started < 9
        # What was lost is said: the sink's own timeout (5 s) and the exit's bound (5 s) race, so
        # either the timed-out send or the exit reports it.
        assert any("payload log" in line and '"WARN"' in line for line in server.log), "".join(server.log[-5:])
    finally:
        hang.close()
