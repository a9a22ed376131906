"""Fixtures: a real `cargo nimify serve` process per model, on a free loopback port."""

import json
import os
import re
import subprocess
import threading
import time

import pytest
import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MODELS = os.path.join(ROOT, "tests", "models")
# Cargo's target directory: target/, or CARGO_TARGET_DIR (`cargo xtask coverage` builds
# instrumented binaries into a directory of their own).
TARGET = os.path.abspath(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
BIN = os.environ.get("NIMIFY_BIN", os.path.join(TARGET, "debug", "cargo-nimify"))


# Test files whose tests build or run the examples' images, or read or change what those change:
# target/nimify/<package>/ (image.json, staging directories), podman's storage, the examples'
# model files (test_image.py swaps and deletes examples/iris/iris.onnx, which test_repository.py copies) and their debug binaries
# (relinked when their inputs are touched). Their tests run in one worker, in order.
SHARES_EXAMPLES = {"test_image.py", "test_examples.py", "test_chart.py", "test_models_fresh.py", "test_multiarch.py", "test_tracing.py", "test_repository.py"}


def shares_examples(nodeid):
    """Whether a test (by pytest node id) is one of [`SHARES_EXAMPLES`]."""
    return os.path.basename(nodeid.split("::", 1)[0]) in SHARES_EXAMPLES


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """`cargo xtask test` runs pytest in parallel (pytest-xdist). The tests that
    [`shares_examples`] are one unit of work; every other test (each server on port 0, each
    temporary directory its own) runs wherever a worker is free. (xdist's own `loadgroup` cannot
    do this on pytest 9: it marks groups by rewriting node ids, which pytest 9 no longer reads.)"""
    from xdist.scheduler import LoadScopeScheduling

    class ExamplesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid):
            return "examples" if shares_examples(nodeid) else nodeid

    return ExamplesTogether(config, log)


def pytest_collection_finish(session):
    """The grouping above must keep finding its tests: a renamed file would otherwise silently
    run them in parallel with the ones they race."""
    found = {os.path.basename(item.nodeid.split("::", 1)[0]) for item in session.items}
    if session.config.getoption("keyword", None) or session.config.getoption("markexpr", None):
        return
    if len(session.items) > 20 and not SHARES_EXAMPLES <= found:
        raise pytest.UsageError(f"conftest.SHARES_EXAMPLES names files with no tests: {sorted(SHARES_EXAMPLES - found)}")


class Service:
    """A running nimify service process (`cargo nimify serve` or a service binary) and its URL,
    found from the JSON "serving" log line (with `grpc_address`, "off" without gRPC); the rest of
    the log is kept in `log`."""

    def __init__(self, argv, env=None, scheme="http", verify=None, cert=None):
        # Tests that do not test shutdown stop at once (the default delay is for Kubernetes), and
        # gRPC listens on a free port (tests run in parallel).
        env = {"NIMIFY_SHUTDOWN_DELAY_MS": "0", "NIMIFY_GRPC_PORT": "0", **(os.environ if env is None else env)}
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
                self.grpc_address = event.get("grpc_address")
                break
        if self.address is None:
            self.proc.kill()
            raise RuntimeError(f"{argv} did not start: {''.join(self.log)}{self.proc.stderr.read()}")
        # Keep draining the log so a chatty server never blocks on a full pipe.
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        self.url = f"{scheme}://{self.address}"
        try:
            r = requests.get(f"{self.url}/v2/health/ready", timeout=5, verify=verify, cert=cert)
            assert r.status_code == 200, r.text
        except BaseException:
            # A server that started but does not answer as expected is not left running.
            self.proc.kill()
            self.proc.wait()
            raise

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

    def __init__(self, model_path, *extra, env=None, scheme="http", verify=None, cert=None):
        super().__init__([*self.argv_for(model_path), *extra], env=env, scheme=scheme, verify=verify, cert=cert)

    @staticmethod
    def argv_for(model_path):
        """The command line of a server for `model_path` on free loopback ports (with the
        environment NIMIFY_GRPC_PORT=0 that `Service` sets)."""
        return [BIN, "nimify", "serve", model_path, "--host", "127.0.0.1", "--port", "0"]


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


@pytest.fixture
def start():
    """`start(name, *flags)`: a server of its own for tests/models/<name>.onnx, stopped after the test."""
    servers = []

    def go(model, *args, env=None):
        s = Server(os.path.join(MODELS, f"{model}.onnx"), *args, env=env)
        servers.append(s)
        return s

    yield go
    for s in servers:
        if s.proc.poll() is None:
            s.stop()


def metrics(server):
    """{(name, labels-string): value} from /metrics."""
    text = requests.get(f"{server.url}/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$', line)
        assert m, line
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out


def metric(server, name, model, **labels):
    """The series of `name` whose labels are exactly model=`model`, version 1 and `labels`; 0 when
    absent."""
    want = {"model": model, "version": "1", **labels}
    for (n, text), value in metrics(server).items():
        if n == name and dict(re.findall(r'(\w+)="([^"]*)"', text)) == want:
            return value
    return 0.0


def sha256_of(path):
    """sha256 hex of a file, as `cargo nimify inspect` and the image labels spell it."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def free_port():
    """A loopback port nothing listens on right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nimify_image(crate, *args, check=True):
    """`cargo nimify image --profile dev --format json ARGS` in the crate's directory (the dev
    profile reuses the debug build the suite already made). Returns the CompletedProcess, with
    `.result` the parsed JSON on success."""
    profile = [] if "--profile" in args else ["--profile", "dev"]
    proc = subprocess.run([BIN, "nimify", "image", *profile, "--format", "json", *args], cwd=crate, capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, proc.stderr
        proc.result = json.loads(proc.stdout)
    return proc


def podman(*args, check=True):
    proc = subprocess.run(["podman", *args], capture_output=True, text=True)
    if check:
        assert proc.returncode == 0, f"podman {' '.join(args)}: {proc.stderr}"
    return proc


def skopeo_inspect(ref, *flags, config=False):
    args = ["skopeo", "inspect", *flags, *(["--config"] if config else []), ref]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(args)}: {proc.stderr}"
    return json.loads(proc.stdout)


# Images podman copied into its storage to run them, removed when the session ends.
PODMAN_IMAGES = set()


@pytest.fixture(scope="session", autouse=True)
def _podman_cleanup():
    yield
    if PODMAN_IMAGES:
        podman("rmi", "--force", *sorted(PODMAN_IMAGES), check=False)


class Container:
    """An image run the hardened way (read-only root, non-root user, no capabilities) with host
    networking on a free loopback port, like a Kubernetes pod with the chart's securityContext."""

    def __init__(self, ref, *args, env=None):
        self.port = free_port()
        self.grpc_port = free_port()
        flags = ["--read-only", "--user", "65532", "--cap-drop", "ALL", "--network", "host", "-e", "NIMIFY_HOST=127.0.0.1", "-e", f"NIMIFY_PORT={self.port}", "-e", f"NIMIFY_GRPC_PORT={self.grpc_port}"]
        for k, v in {"NIMIFY_SHUTDOWN_DELAY_MS": "0", **(env or {})}.items():
            flags += ["-e", f"{k}={v}"]
        self.id = podman("run", "-d", *flags, ref, *args).stdout.strip().splitlines()[-1]
        PODMAN_IMAGES.add(podman("inspect", "--format", "{{.Image}}", self.id).stdout.strip())
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if requests.get(f"{self.url}/v2/health/ready", timeout=1).status_code == 200:
                    return
            except requests.ConnectionError:
                pass
            if podman("inspect", "--format", "{{.State.Running}}", self.id).stdout.strip() != "true":
                break
            time.sleep(0.2)
        logs = self.logs()
        self.remove()
        raise RuntimeError(f"container from {ref} did not get ready: {logs}")

    def exec(self, *argv):
        return podman("exec", self.id, *argv, check=False)

    def logs(self):
        proc = podman("logs", self.id, check=False)
        return proc.stdout + proc.stderr

    def stop(self):
        """`podman stop` (SIGTERM, SIGKILL after 20 s), then the exit code."""
        podman("stop", "--time", "20", self.id)
        return int(podman("inspect", "--format", "{{.State.ExitCode}}", self.id).stdout.strip())

    def remove(self):
        podman("rm", "--force", self.id, check=False)


@pytest.fixture(scope="session")
def example_image(tmp_path_factory):
    """`example_image(name)` builds examples/<name> into an OCI layout once per session and
    returns (reference, `--format json` result)."""
    built = {}
    root = tmp_path_factory.mktemp("images")

    def build(name):
        if name not in built:
            ref = f"oci:{root / name}:test"
            proc = nimify_image(os.path.join(ROOT, "examples", name), "--output", ref)
            built[name] = (ref, proc.result)
        return built[name]

    return build


def openssl(*args):
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A self-signed CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", d / "ca.key", "-out", d / "ca.pem", "-days", "1", "-subj", "/CN=nimify test CA")
    for name, ext in (("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth"), ("client", "extendedKeyUsage=clientAuth")):
        (d / f"{name}.ext").write_text(ext + "\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", d / f"{name}.key", "-out", d / f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.pem", "-CAkey", d / "ca.key", "-CAcreateserial",
                "-out", d / f"{name}.pem", "-days", "1", "-extfile", d / f"{name}.ext")
    return d
