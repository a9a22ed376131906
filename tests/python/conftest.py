"""Fixtures: a real `cargo nimify serve` process per model, on a free loopback port."""

import json
import os
import subprocess
import threading
import time

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "tests", "models")
BIN = os.environ.get("NIMIFY_BIN", os.path.join(ROOT, "target", "debug", "cargo-nimify"))


class Service:
    """A running nimify service process (`cargo nimify serve` or a service binary) and its URL,
    found from the JSON "serving" log line; the rest of the log is kept in `log`."""

    def __init__(self, argv, env=None):
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.log = []
        self.address = None
        deadline = time.time() + 60
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if event.get("message") == "serving":
                self.address = event["address"]
                break
        if self.address is None:
            self.proc.kill()
            raise RuntimeError(f"{argv} did not start: {''.join(self.log)}{self.proc.stderr.read()}")
        # Keep draining the log so a chatty server never blocks on a full pipe.
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.url = f"http://{self.address}"
        r = requests.get(f"{self.url}/v2/health/ready", timeout=5)
        assert r.status_code == 200, r.text

    def stop(self):
        """SIGTERM, then the exit code (killed after 10 s)."""
        self.proc.terminate()
        try:
            code = self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc.stdout.close()
        return code


class Server(Service):
    """`cargo nimify serve MODEL` on a free loopback port, with extra flags."""

    def __init__(self, model_path, *extra, env=None):
        super().__init__([BIN, "nimify", "serve", model_path, "--host", "127.0.0.1", "--port", "0", *extra], env=env)


@pytest.fixture(scope="session")
def serve():
    """`serve(name)` returns a started server for tests/models/<name>.onnx, shared per session."""
    servers = {}

    def start(name):
        if name not in servers:
            servers[name] = Server(os.path.join(MODELS, f"{name}.onnx"))
        return servers[name]

    yield start
    for s in servers.values():
        s.stop()
