"""The audit log: one JSON line per inference request or call, with the API key's name and never
the key, for successes, client errors, refused keys and a full in-flight cap, over HTTP and gRPC."""

import json
import os
import socket
import stat
import time

import numpy as np
import requests

from conftest import MODELS, Server

MLP = os.path.join(MODELS, "mlp.onnx")
SECRET = "s3cret-key-material"


def body(rows=1, cols=4):
    return {"inputs": [{"name": "x", "shape": [rows, cols], "datatype": "FP32", "data": [1.0] * (rows * cols)}]}


def lines(path, count, timeout=10):
    deadline = time.time() + timeout
    while True:
        text = open(path).read() if os.path.exists(path) else ""
        found = [json.loads(line) for line in text.splitlines()]
        if len(found) >= count or time.time() > deadline:
            assert len(found) >= count, text
            return found


def test_each_outcome_is_one_line_with_the_key_name_and_no_key(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"# operators\nci:{SECRET}\nunnamed-{SECRET}\n:legacy:{SECRET}\n")
    audit = tmp_path / "audit.log"
    server = Server(MLP, "--api-keys-file", str(keys), "--audit-log", str(audit), "--max-in-flight", "1")
    try:
        named = {"x-api-key": SECRET}
        ok = requests.post(f"{server.url}/v2/models/mlp/infer", json=body(), headers={**named, "x-request-id": "ok-1"}, timeout=10)
        assert ok.status_code == 200
        bad = requests.post(f"{server.url}/v2/models/mlp/infer", json=body(cols=3), headers={**named, "x-request-id": "bad-1"}, timeout=10)
        assert bad.status_code == 400 or bad.status_code == 422, bad.text
        unnamed = requests.post(f"{server.url}/v2/models/mlp/versions/1/infer", json=body(),
                                headers={"authorization": f"Bearer unnamed-{SECRET}", "x-request-id": "unnamed-1"}, timeout=10)
        assert unnamed.status_code == 200
        # A key that itself holds a colon is written with an empty name.
        legacy = requests.post(f"{server.url}/v2/models/mlp/infer", json=body(), headers={"x-api-key": f"legacy:{SECRET}", "x-request-id": "legacy-1"}, timeout=10)
        assert legacy.status_code == 200
        denied = requests.post(f"{server.url}/v2/models/mlp/infer", json=body(), headers={"x-api-key": "wrong", "x-request-id": "denied-1"}, timeout=10)
        assert denied.status_code == 401
        # Probes and scrapes are not audited.
        assert requests.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200
        assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 200
        # A request that holds the one in-flight place while its body has not come; the next is
        # refused. Which arrives first is up to the server: tried until the held one was first.
        port = int(server.url.rsplit(":", 1)[1])
        for attempt in range(50):
            held = socket.create_connection(("127.0.0.1", port))
            held.sendall(f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nx-api-key: {SECRET}\r\nx-request-id: held-{attempt}\r\n"
                         "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n".encode())
            time.sleep(0.1)
            full = requests.post(f"{server.url}/v2/models/mlp/infer", json=body(), headers={**named, "x-request-id": "full-1"}, timeout=10)
            held.close()
            if full.status_code == 503:
                break
            assert full.status_code == 200, full.text
        assert full.status_code == 503, full.text
        found = {line["request_id"]: line for line in lines(audit, 6)}
    finally:
        server.stop()
    assert set(found) >= {"ok-1", "bad-1", "unnamed-1", "legacy-1", "denied-1", "full-1"}, sorted(found)
    assert not [line for line in found.values() if "health" in line["operation"] or "metrics" in line["operation"]]
    ok = found["ok-1"]
    assert (ok["api_key"], ok["outcome"], ok["status"], ok["protocol"]) == ("ci", "success", 200, "http")
    assert (ok["operation"], ok["model"], ok["version"]) == ("POST /v2/models/mlp/infer", "mlp", None)
    assert ok["client"].startswith("127.0.0.1:") and ok["micros"] > 0 and ok["time"].endswith("Z")
    assert (found["bad-1"]["outcome"], found["bad-1"]["api_key"]) == ("client_error", "ci")
    assert (found["unnamed-1"]["api_key"], found["unnamed-1"]["version"]) == (None, "1")
    assert (found["denied-1"]["outcome"], found["denied-1"]["status"], found["denied-1"]["api_key"]) == ("denied", 401, None)
    assert found["full-1"]["outcome"] == "rejected" and found["full-1"]["status"] == 503 and found["full-1"]["api_key"] == "ci"
    assert (found["legacy-1"]["api_key"], found["legacy-1"]["outcome"]) == (None, "success")
    assert all(line["log"] == "audit" for line in found.values())
    text = open(audit).read()
    assert SECRET not in text and "wrong" not in text
    assert stat.S_IMODE(os.stat(audit).st_mode) == 0o600


def test_grpc_calls_are_audited_too(tmp_path):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    keys = tmp_path / "keys"
    keys.write_text(f"ci:{SECRET}\n")
    audit = tmp_path / "audit.log"
    server = Server(MLP, "--api-keys-file", str(keys), "--audit-log", str(audit))
    try:
        client = grpcclient.InferenceServerClient(server.grpc_address)
        x = grpcclient.InferInput("x", [1, 4], "FP32")
        x.set_data_from_numpy(np.ones((1, 4), dtype=np.float32))
        client.infer("mlp", [x], headers={"x-api-key": SECRET, "x-request-id": "grpc-ok"})
        try:
            client.infer("mlp", [x], headers={"x-api-key": "wrong", "x-request-id": "grpc-denied"})
            raise AssertionError("a wrong key was accepted")
        except InferenceServerException:
            pass
        client.is_server_ready()
        try:
            client.get_model_metadata("nope", headers={"x-api-key": SECRET, "x-request-id": "grpc-unknown"})
            raise AssertionError("an unknown model was found")
        except InferenceServerException:
            pass
        # A stream: one line when it opens, then one per message with its model and outcome.
        answers = []
        client.start_stream(callback=lambda result, error: answers.append((result, error)), headers={"x-api-key": SECRET, "x-request-id": "grpc-stream"})
        client.async_stream_infer("mlp", [x], request_id="m1")
        client.async_stream_infer("nope", [x], request_id="m2")
        client.stop_stream()
        assert len(answers) == 2
        found = {}
        for line in lines(audit, 6):
            found.setdefault(line["request_id"], []).append(line)
    finally:
        server.stop()
    [ok] = found["grpc-ok"]
    assert (ok["protocol"], ok["operation"], ok["api_key"], ok["outcome"], ok["status"], ok["model"]) == \
        ("grpc", "inference.GRPCInferenceService/ModelInfer", "ci", "success", 0, "mlp")
    assert ok["client"].startswith("127.0.0.1:") and "version" in ok and ok["version"] is None
    [denied] = found["grpc-denied"]
    assert (denied["outcome"], denied["status"], denied["api_key"], denied["model"]) == ("denied", 16, None, None)
    [unknown] = found["grpc-unknown"]
    assert (unknown["operation"], unknown["model"], unknown["outcome"], unknown["status"]) == \
        ("inference.GRPCInferenceService/ModelMetadata", "nope", "client_error", 5)
    opened, *messages = sorted(found["grpc-stream"], key=lambda l: l.get("message", 0))
    assert "message" not in opened and opened["model"] is None and opened["api_key"] == "ci"
    assert [(m["message"], m["model"], m["outcome"], m["status"], m["api_key"]) for m in messages] == \
        [(1, "mlp", "success", 0, "ci"), (2, "nope", "client_error", 5, "ci")]
    assert all(m["client"] == opened["client"] for m in messages)
    assert SECRET not in open(audit).read()


def test_an_audit_log_that_cannot_be_opened_stops_the_server_at_start(tmp_path):
    import subprocess

    p = subprocess.run([*Server.argv_for(MLP), "--audit-log", str(tmp_path / "missing" / "audit.log")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 1 and "cannot open the audit log" in p.stderr, p.stderr
    # `-` writes the lines to stderr, beside the log.
    server = Server(MLP, "--audit-log", "-")
    try:
        requests.post(f"{server.url}/v2/models/mlp/infer", json=body(), headers={"x-request-id": "to-stderr"}, timeout=10)
        deadline = time.time() + 10
        while not any('"request_id":"to-stderr"' in line and '"outcome":"success"' in line for line in server.log):
            assert time.time() < deadline, "".join(server.log[-10:])
            time.sleep(0.1)
    finally:
        server.stop()
