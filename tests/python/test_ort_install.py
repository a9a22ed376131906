"""`cargo nimify ort install` without Python: from a package index on loopback (HTML and JSON
simple API, a tampered wheel, a flaky and a truncating server, an unreachable one) and from files
on disk (`--from` a wheel, a release-style .tar.gz, damaged or foreign archives).

The wheel served is the real pinned one: `cargo xtask test` installed ONNX Runtime before the
tests, and the install keeps the wheel it downloaded in the per-user cache."""

import glob
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import zipfile

import pytest

from conftest import BIN

WHEEL_GLOB = "onnxruntime-*-cp311-cp311-manylinux_2_28_x86_64.whl"
LIBS = ["libonnxruntime.so.1.32.0", "libonnxruntime_providers_shared.so"]


def cache_base():
    base = os.environ.get("NIMIFY_CACHE_DIR")
    if base:
        return base
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(xdg, "nimify")


@pytest.fixture(scope="module")
def wheel():
    """The pinned linux/amd64 wheel the setup's install kept."""
    found = glob.glob(os.path.join(cache_base(), "onnxruntime", "*", WHEEL_GLOB))
    assert found, f"no kept wheel under {cache_base()}: run `cargo nimify ort install --force` (cargo xtask test does)"
    return found[0]


@pytest.fixture(scope="module")
def wheel_bytes(wheel):
    with open(wheel, "rb") as f:
        return f.read()


def sha256(data):
    return hashlib.sha256(data).hexdigest()


class Index:
    """A package index on a free loopback port. `routes` maps a path to a handler
    `(request) -> (status, headers, body)`; every request is recorded."""

    def __init__(self):
        self.routes = {}
        self.requests = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                route = outer.routes.get(self.path)
                if route is None:
                    self.send_error(404)
                    return
                route(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def reply(status, body, content_type="application/octet-stream", length=None):
    def handle(h):
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body) if length is None else length))
        h.end_headers()
        h.wfile.write(body)

    return handle


@pytest.fixture
def index():
    idx = Index()
    yield idx
    idx.close()


def html_page(name):
    return f'<html><body><a href="../../packages/{name}#sha256=whatever">{name}</a></body></html>'.encode()


def serve_wheel(index, name, data, json_page=False):
    if json_page:
        page = json.dumps({"meta": {"api-version": "1.1"}, "name": "onnxruntime",
                           "files": [{"filename": name, "url": f"{index.url}/packages/{name}", "hashes": {}}]}).encode()
        index.routes["/simple/onnxruntime/"] = reply(200, page, "application/vnd.pypi.simple.v1+json")
    else:
        index.routes["/simple/onnxruntime/"] = reply(200, html_page(name), "text/html")
    index.routes[f"/packages/{name}"] = reply(200, data)


def no_python_env(tmp_path):
    """An environment whose PATH holds no python3 (nor anything else) and a fresh cache."""
    empty = tmp_path / "bin"
    empty.mkdir(parents=True, exist_ok=True)
    env = {"HOME": str(tmp_path), "PATH": str(empty), "NIMIFY_CACHE_DIR": str(tmp_path / "cache")}
    assert shutil.which("python3", path=env["PATH"]) is None and shutil.which("pip", path=env["PATH"]) is None
    return env


def install(env, *args):
    return subprocess.run([BIN, "nimify", "ort", "install", *args], env=env, capture_output=True, text=True, timeout=300)


def platform_dir(env):
    return os.path.join(env["NIMIFY_CACHE_DIR"], "onnxruntime", "1.32.0", "linux-amd64")


def assert_installed(env, result, wheel_bytes):
    assert result.returncode == 0, result.stderr
    lib = result.stdout.strip()
    assert lib == os.path.join(platform_dir(env), LIBS[0])
    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as z:
        for name in LIBS:
            with open(os.path.join(platform_dir(env), name), "rb") as f:
                assert f.read() == z.read(f"onnxruntime/capi/{name}"), name
    assert sorted(os.listdir(platform_dir(env))) == sorted(LIBS), "no partial files left"
    # The runtime's own lookup finds it.
    path = subprocess.run([BIN, "nimify", "ort", "path"], env=env, capture_output=True, text=True, timeout=60)
    assert path.stdout.strip() == lib, path.stderr


def assert_nothing_installed(env):
    d = platform_dir(env)
    assert not os.path.exists(d) or os.listdir(d) == [], os.listdir(d)


@pytest.mark.parametrize("json_page", [False, True], ids=["html-index", "json-index"])
def test_installs_from_an_index_without_python(tmp_path, index, wheel, wheel_bytes, json_page):
    env = no_python_env(tmp_path)
    name = os.path.basename(wheel)
    serve_wheel(index, name, wheel_bytes, json_page)
    r = install(env, "--index-url", f"{index.url}/simple")
    assert_installed(env, r, wheel_bytes)
    assert "Installed ONNX Runtime 1.32.0 (linux/amd64)" in r.stderr
    page = [h for p, h in index.requests if p == "/simple/onnxruntime/"][0]
    assert "application/vnd.pypi.simple.v1+json" in page["accept"]
    # The download is kept: a forced reinstall and a damaged library need no index.
    index.routes.clear()
    again = install(env, "--force")
    assert_installed(env, again, wheel_bytes)
    assert "downloaded before" in again.stderr
    with open(os.path.join(platform_dir(env), LIBS[0]), "r+b") as f:
        f.truncate(1000)
    repaired = install(env)
    assert_installed(env, repaired, wheel_bytes)
    assert "Fresh" in install(env).stderr


def test_the_index_comes_from_pip_index_url_too(tmp_path, index, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    serve_wheel(index, os.path.basename(wheel), wheel_bytes)
    r = install({**env, "PIP_INDEX_URL": f"{index.url}/simple/"})
    assert_installed(env, r, wheel_bytes)


def test_a_tampered_wheel_is_refused_and_nothing_is_installed(tmp_path, index, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    name = os.path.basename(wheel)
    tampered = bytearray(wheel_bytes)
    tampered[len(tampered) // 2] ^= 0xFF
    serve_wheel(index, name, bytes(tampered))
    r = install(env, "--index-url", f"{index.url}/simple")
    assert r.returncode == 1
    assert f"sha256 {sha256(bytes(tampered))}" in r.stderr and "refusing to install it" in r.stderr, r.stderr
    assert "help: the index or a proxy served other bytes" in r.stderr
    assert_nothing_installed(env)
    assert glob.glob(os.path.join(env["NIMIFY_CACHE_DIR"], "onnxruntime", "1.32.0", "*.whl")) == []
    assert glob.glob(os.path.join(env["NIMIFY_CACHE_DIR"], "**", "*.partial"), recursive=True) == []
    # A wrong answer is not retried.
    assert sum(1 for p, _ in index.requests if p.startswith("/packages/")) == 1


def test_a_server_sending_more_than_the_pinned_size_is_cut_off(tmp_path, index, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    serve_wheel(index, os.path.basename(wheel), wheel_bytes + b"\0" * 4096)
    r = install(env, "--index-url", f"{index.url}/simple")
    assert r.returncode == 1 and "more than the pinned" in r.stderr, r.stderr
    assert_nothing_installed(env)


def test_transient_failures_are_retried(tmp_path, index, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    name = os.path.basename(wheel)
    serve_wheel(index, name, wheel_bytes)
    good_page = index.routes["/simple/onnxruntime/"]
    good_wheel = index.routes[f"/packages/{name}"]
    calls = {"page": 0, "wheel": 0}

    def flaky_page(h):
        calls["page"] += 1
        (reply(503, b"busy", "text/plain") if calls["page"] == 1 else good_page)(h)

    def cut_wheel(h):
        # First answer: the full Content-Length announced, half the body sent, connection closed.
        calls["wheel"] += 1
        if calls["wheel"] == 1:
            reply(200, wheel_bytes[: len(wheel_bytes) // 2], length=len(wheel_bytes))(h)
            h.close_connection = True
        else:
            good_wheel(h)

    index.routes["/simple/onnxruntime/"] = flaky_page
    index.routes[f"/packages/{name}"] = cut_wheel
    r = install(env, "--index-url", f"{index.url}/simple")
    assert_installed(env, r, wheel_bytes)
    assert r.stderr.count("Retrying") == 2, r.stderr
    assert calls == {"page": 2, "wheel": 2}


def test_index_errors_say_what_to_do(tmp_path, index, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    # The page does not list the wheel.
    index.routes["/simple/onnxruntime/"] = reply(200, html_page("onnxruntime-1.0.0-py3-none-any.whl"), "text/html")
    r = install(env, "--index-url", f"{index.url}/simple")
    assert r.returncode == 1 and "does not list onnxruntime-1.32.0-cp311-cp311-manylinux_2_28_x86_64.whl" in r.stderr
    assert "--from FILE" in r.stderr
    # No such project on the index: 404, not retried.
    r = install(env, "--index-url", f"{index.url}/nothing-here")
    assert r.returncode == 1 and "answered HTTP 404" in r.stderr and "Retrying" not in r.stderr, r.stderr
    # JSON that is not a simple-API page.
    index.routes["/simple/onnxruntime/"] = reply(200, b"{\"hello\": 1}", "application/json")
    r = install(env, "--index-url", f"{index.url}/simple")
    assert r.returncode == 1 and "not a simple-API page" in r.stderr, r.stderr
    # Nothing listening: tried three times, then the next steps.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{s.getsockname()[1]}/simple"
    r = install(env, "--index-url", closed)
    assert r.returncode == 1 and r.stderr.count("Retrying") == 2 and "Connection refused" in r.stderr, r.stderr
    assert "help: check the network" in r.stderr and "PIP_INDEX_URL" in r.stderr
    assert_nothing_installed(env)


def release_tarball(path, libs, top="onnxruntime-linux-x64-1.32.0"):
    """An archive laid out like ONNX Runtime's release tarballs: lib/ with the versioned file and
    symbolic links to it."""
    with tarfile.open(path, "w:gz") as tar:
        for name, data in libs.items():
            info = tarfile.TarInfo(f"{top}/lib/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo(f"{top}/lib/libonnxruntime.so")
        link.type = tarfile.SYMTYPE
        link.linkname = "libonnxruntime.so.1.32.0"
        tar.addfile(link)


def test_from_files_on_disk(tmp_path, wheel, wheel_bytes):
    env = no_python_env(tmp_path)
    r = install(env, "--from", wheel)
    assert_installed(env, r, wheel_bytes)
    # The old flag name still works.
    assert_installed(env, install(env, "--wheel", wheel, "--force"), wheel_bytes)

    with zipfile.ZipFile(io.BytesIO(wheel_bytes)) as z:
        libs = {name: z.read(f"onnxruntime/capi/{name}") for name in LIBS}
    good = tmp_path / "onnxruntime-linux-x64-1.32.0.tgz"
    release_tarball(good, libs)
    env2 = no_python_env(tmp_path / "two")
    assert_installed(env2, install(env2, "--from", str(good)), wheel_bytes)

    env3 = no_python_env(tmp_path / "three")
    bad_libs = dict(libs)
    bad = bytearray(bad_libs[LIBS[0]])
    bad[4096] ^= 1
    bad_libs[LIBS[0]] = bytes(bad)
    tampered = tmp_path / "tampered.tgz"
    release_tarball(tampered, bad_libs)
    r = install(env3, "--from", str(tampered))
    assert r.returncode == 1 and f"has sha256 {sha256(bytes(bad))}" in r.stderr, r.stderr
    assert "help: use the official onnxruntime 1.32.0 wheel for linux/amd64" in r.stderr
    assert_nothing_installed(env3)

    # A library missing, a file that is no archive, a truncated wheel, a file that does not exist.
    partial = tmp_path / "partial.tgz"
    release_tarball(partial, {LIBS[0]: libs[LIBS[0]]})
    r = install(env3, "--from", str(partial))
    assert r.returncode == 1 and "holds no libonnxruntime_providers_shared.so" in r.stderr, r.stderr
    text = tmp_path / "notes.txt"
    text.write_text("not an archive")
    r = install(env3, "--from", str(text))
    assert r.returncode == 1 and "neither a wheel (zip) nor a .tar.gz archive" in r.stderr, r.stderr
    cut = tmp_path / "cut.whl"
    cut.write_bytes(wheel_bytes[: len(wheel_bytes) // 3])
    r = install(env3, "--from", str(cut))
    assert r.returncode == 1 and "damaged archive" in r.stderr, r.stderr
    r = install(env3, "--from", str(tmp_path / "absent.whl"))
    assert r.returncode == 1 and "absent.whl" in r.stderr and "No such file" in r.stderr, r.stderr
    assert_nothing_installed(env3)
    assert glob.glob(os.path.join(env3["NIMIFY_CACHE_DIR"], "**", "*.partial"), recursive=True) == []


def test_platforms(tmp_path, wheel):
    env = no_python_env(tmp_path)
    # Another platform's pin does not take this platform's libraries.
    r = install(env, "--platform", "linux/arm64", "--from", wheel)
    assert r.returncode == 1 and "for linux/arm64 is pinned as 27165936 bytes" in r.stderr, r.stderr
    r = install(env, "--platform", "x86_64-apple-darwin")
    assert r.returncode == 1 and "no macOS x86_64 wheel after 1.23.2" in r.stderr, r.stderr
    r = install(env, "--platform", "plan9/mips")
    assert r.returncode == 1 and "pinned: linux/amd64, linux/arm64, darwin/arm64, windows/amd64" in r.stderr
    verbose = subprocess.run([BIN, "nimify", "ort", "path", "-v"], env=env, capture_output=True, text=True, timeout=60)
    assert verbose.returncode == 1
    assert "Platform linux/amd64: libonnxruntime.so.1.32.0 (pinned wheel onnxruntime-1.32.0-cp311" in verbose.stderr
    assert "Missing " + os.path.join(platform_dir(env), LIBS[0]) in verbose.stderr
    # --format json: the error as an object on stdout.
    r = subprocess.run([BIN, "nimify", "ort", "path", "--format", "json"], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["kind"] == "onnxruntime", r.stdout


def run_on_a_terminal(argv, env):
    """Runs argv with stderr on a pseudo-terminal (stdout piped); returns (code, stdout, terminal bytes)."""
    import pty
    master, slave = pty.openpty()
    p = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    seen = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    os.close(master)
    out = p.stdout.read().decode()
    return p.wait(timeout=300), out, seen


def test_the_download_bar_draws_on_a_terminal_only(tmp_path, index, wheel, wheel_bytes):
    name = os.path.basename(wheel)
    serve_wheel(index, name, wheel_bytes)
    # Piped: status lines only, no bar, no cursor movement, no colour.
    env = no_python_env(tmp_path / "piped")
    r = install(env, "--index-url", f"{index.url}/simple")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "\x1b" not in r.stderr and "[=" not in r.stderr, repr(r.stderr)
    assert "Downloading" in r.stderr
    # On a terminal: the byte bar (with its total) and coloured status verbs.
    env = no_python_env(tmp_path / "tty")
    env["TERM"] = "xterm"
    code, out, seen = run_on_a_terminal([BIN, "nimify", "ort", "install", "--index-url", f"{index.url}/simple"], env)
    assert code == 0, seen
    assert out.strip() == os.path.join(platform_dir(env), LIBS[0])
    text = seen.decode(errors="replace")
    # The bar's "done/total" counter, which no status line prints.
    assert re.search(r"\d (B|KiB|MiB)/\d", text) and "Downloading" in text, repr(text)
    assert "\x1b[1m\x1b[32m" in text, "status verbs are bold green on a terminal"
    # -q on a terminal: nothing at all on stderr.
    env = no_python_env(tmp_path / "quiet")
    code, out, seen = run_on_a_terminal([BIN, "nimify", "-q", "ort", "install", "--index-url", f"{index.url}/simple"], env)
    assert code == 0 and seen == b"", seen
