"""`cargo nimify image` end to end with the real tools: skopeo reads what we write, podman runs
and loads it, Debian's docker-registry receives pushes (plain HTTP, and htpasswd over TLS with a
self-signed certificate). Reproducibility, the weights-only layer change, and every failure
leaving no half-written output."""

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import time

import onnx
import pytest
import requests

from conftest import BIN, Container, PODMAN_IMAGES, ROOT, TARGET, free_port, nimify_image, podman, sha256_of, skopeo_inspect

EXAMPLES = os.path.join(ROOT, "examples")
IRIS = os.path.join(EXAMPLES, "iris")
TEXT = os.path.join(EXAMPLES, "text")


def manifest_of(layout, tag="test"):
    """(manifest, config) of a tag in an OCI layout."""
    index = json.load(open(os.path.join(layout, "index.json")))
    [desc] = [m for m in index["manifests"] if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
    blob = lambda d: json.load(open(os.path.join(layout, "blobs", *d.split(":"))))  # noqa: E731
    manifest = blob(desc["digest"])
    return desc["digest"], manifest, blob(manifest["config"]["digest"])


def test_config_labels_user_and_layers(example_image):
    ref, result = example_image("iris")
    info = skopeo_inspect(ref)
    assert info["Digest"] == result["digest"]
    config = skopeo_inspect(ref, config=True)["config"]
    assert config["User"] == "65532:65532"
    assert config["ExposedPorts"] == {"8000/tcp": {}, "8001/tcp": {}}
    assert config["Entrypoint"] == ["/opt/nimify/bin/example-iris"]
    env = dict(e.split("=", 1) for e in config["Env"])
    model_sha = sha256_of(os.path.join(IRIS, "iris.onnx"))
    assert env["NIMIFY_MODEL_SHA256"] == model_sha
    assert env["ORT_DYLIB_PATH"] == "/opt/nimify/lib/libonnxruntime.so.1.32.0"
    labels = config["Labels"]
    assert labels["io.nimify.model.name"] == "iris" and labels["io.nimify.model.sha256"] == model_sha
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.title"] == "example-iris"
    assert labels["org.opencontainers.image.created"] == "1970-01-01T00:00:00Z"
    assert "org.opencontainers.image.source" not in labels, "no repository in Cargo.toml, so no source label"
    head = subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert labels["org.opencontainers.image.revision"] == head
    # One layer per part, the model last; image.json records the same for chart and deploy.
    record = json.load(open(os.path.join(TARGET, "nimify", "example-iris", "image.json")))
    assert [l["role"] for l in record["layers"]] == ["libraries", "onnxruntime", "app", "model"]
    assert [l["digest"] for l in record["layers"]] == info["Layers"]
    assert record["models"][0]["sha256"] == model_sha and record["port"] == 8000 and record["grpc_port"] == 8001 and record["user"] == 65532


def test_several_models_carry_one_digest_each(example_image):
    ref, _ = example_image("pipeline")
    labels = skopeo_inspect(ref, config=True)["config"]["Labels"]
    models = os.path.join(EXAMPLES, "pipeline", "models")
    want = f"scaler={sha256_of(os.path.join(models, 'scaler.onnx'))},scorer={sha256_of(os.path.join(models, 'scorer.onnx'))}"
    assert labels["io.nimify.model.sha256"] == want and labels["io.nimify.model.name"] == "scaler,scorer"


def test_a_changed_model_file_refuses_to_start_naming_both_digests(example_image):
    ref, _ = example_image("iris")
    wrong = "0" * 64
    proc = podman("run", "--rm", "--read-only", "--user", "65532", "--network", "host", "-e", f"NIMIFY_PORT={free_port()}", "-e", f"NIMIFY_GRPC_PORT={free_port()}", "-e", f"NIMIFY_MODEL_SHA256={wrong}", ref, check=False)
    assert proc.returncode == 1
    error = proc.stderr.strip().splitlines()[-1]
    assert wrong in error and sha256_of(os.path.join(IRIS, "iris.onnx")) in error and "rebuild the image" in error


def test_same_digest_twice_with_every_input_touched(tmp_path):
    first = nimify_image(TEXT, "--output", f"oci:{tmp_path / 'a'}:test").result
    # Every input: the crate's sources, model and asset, the binary, the ONNX Runtime library.
    time.sleep(1.1)
    for top, _, files in os.walk(TEXT):
        for f in files:
            os.utime(os.path.join(top, f))
    os.utime(os.path.join(TARGET, "debug", "example-text"))
    ort = subprocess.run([BIN, "nimify", "ort", "path"], capture_output=True, text=True).stdout.strip()
    os.utime(ort)
    second = nimify_image(TEXT, "--output", f"oci:{tmp_path / 'b'}:test").result
    assert first["digest"] == second["digest"]
    assert manifest_of(tmp_path / "a") == manifest_of(tmp_path / "b")
    # The asset is in the app layer, where the running service found it (test_examples).
    _, manifest, config = manifest_of(tmp_path / "a")
    assert len(manifest["layers"]) == 4 and config["config"]["Env"][-1] == "NIMIFY_ASSET_DIR=/opt/nimify/assets"


@contextlib.contextmanager
def swapped(path, replacement):
    """Puts `replacement` at `path` for the block, restoring the original afterwards."""
    backup = f"{path}.orig-{os.getpid()}"
    shutil.copy2(path, backup)
    try:
        if replacement is None:
            os.remove(path)
        else:
            shutil.copyfile(replacement, path)
        yield
    finally:
        os.replace(backup, path)


def test_weights_only_change_touches_only_the_model_layer(tmp_path):
    model = os.path.join(IRIS, "iris.onnx")
    nimify_image(IRIS, "--output", f"oci:{tmp_path / 'a'}:test")
    before_digest, before, before_config = manifest_of(tmp_path / "a")
    m = onnx.load(model)
    # "Retrain": the same graph and signature with other coefficients.
    [coefficients] = [a for n in m.graph.node if n.op_type == "LinearClassifier" for a in n.attribute if a.name == "coefficients"]
    coefficients.floats[:] = [v * 1.01 for v in coefficients.floats]
    retrained = tmp_path / "retrained.onnx"
    onnx.save(m, retrained)
    with swapped(model, retrained):
        nimify_image(IRIS, "--output", f"oci:{tmp_path / 'b'}:test")
        after_digest, after, after_config = manifest_of(tmp_path / "b")
        # The new weights are what the image serves.
        container = Container(f"oci:{tmp_path / 'b'}:test")
        try:
            r = requests.post(f"{container.url}/v1/models/iris/predict", json={"measurements": [[5.1, 3.5, 1.4, 0.2]]}, timeout=10)
            assert r.status_code == 200, r.text
        finally:
            container.remove()
    assert before_digest != after_digest
    assert [l["digest"] for l in before["layers"][:3]] == [l["digest"] for l in after["layers"][:3]]
    assert before["layers"][3]["digest"] != after["layers"][3]["digest"]
    assert before["config"]["digest"] != after["config"]["digest"]
    assert before_config["rootfs"]["diff_ids"][:3] == after_config["rootfs"]["diff_ids"][:3]


def test_archives_load_with_podman_and_inspect_with_skopeo(tmp_path):
    docker = tmp_path / "iris-docker.tar"
    oci = tmp_path / "iris-oci.tar"
    d = nimify_image(IRIS, "--output", f"docker-archive:{docker}", "--tag", "archive").result
    o = nimify_image(IRIS, "--output", f"oci-archive:{oci}:archive").result
    assert d["digest"] == o["digest"], "the same image, whatever the container format"
    assert d["reference"] == f"docker-archive:{docker}"
    assert skopeo_inspect(f"docker-archive:{docker}")["Labels"]["io.nimify.model.name"] == "iris"
    assert skopeo_inspect(f"oci-archive:{oci}:archive")["Digest"] == o["digest"]
    raw = subprocess.run(["skopeo", "inspect", "--raw", f"oci-archive:{oci}:archive"], capture_output=True, text=True, check=True).stdout
    config_digest = json.loads(raw)["config"]["digest"]
    # An OCI archive also serves as a base.
    on_archive = nimify_image(IRIS, "--base", f"oci-archive:{oci}:archive", "--output", f"oci:{tmp_path / 'on-archive'}:test").result
    layers = skopeo_inspect(f"oci:{tmp_path / 'on-archive'}:test")["Layers"]
    assert layers[:4] == skopeo_inspect(f"oci-archive:{oci}:archive")["Layers"] and len(layers) == 7 and on_archive["digest"] != o["digest"]
    for archive, name in ((docker, "localhost/example-iris:archive"), (oci, "localhost/archive:latest")):
        loaded = podman("load", "--input", str(archive))
        assert name in loaded.stdout, loaded.stdout + loaded.stderr
        # podman's image id is the config digest: the loaded image is ours, bit for bit.
        image_id = podman("image", "inspect", "--format", "{{.Id}}", name).stdout.strip()
        PODMAN_IMAGES.add(image_id)
        assert f"sha256:{image_id}" == config_digest


def test_a_base_image_replaces_the_host_libraries(tmp_path, example_image):
    base_ref, base = example_image("iris")
    out = nimify_image(IRIS, "--base", base_ref, "--output", f"oci:{tmp_path / 'on-base'}:test").result
    layers = skopeo_inspect(f"oci:{tmp_path / 'on-base'}:test")["Layers"]
    base_layers = skopeo_inspect(base_ref)["Layers"]
    assert layers[:4] == base_layers and len(layers) == 7
    labels = skopeo_inspect(f"oci:{tmp_path / 'on-base'}:test", config=True)["config"]["Labels"]
    assert labels["org.opencontainers.image.base.name"] == base_ref
    container = Container(f"oci:{tmp_path / 'on-base'}:test")
    try:
        assert container.exec("example-iris", "healthcheck").returncode == 0
    finally:
        container.remove()
    assert out["digest"] != base["digest"]


class Registry:
    """Debian's docker-registry on a free loopback port, optionally with TLS and htpasswd."""

    def __init__(self, root, tls=False, user=None, password=None):
        self.port = free_port()
        self.root = root
        config = {"version": 0.1, "log": {"level": "warn"}, "storage": {"filesystem": {"rootdirectory": str(root / "data")}}, "http": {"addr": f"127.0.0.1:{self.port}"}}
        if tls:
            subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", root / "key.pem", "-out", root / "cert.pem", "-days", "1",
                            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:FALSE"], check=True, capture_output=True)
            config["http"]["tls"] = {"certificate": str(root / "cert.pem"), "key": str(root / "key.pem")}
            # skopeo trusts a directory of CA files.
            (root / "certs").mkdir()
            shutil.copy(root / "cert.pem", root / "certs" / "ca.crt")
        if user:
            htpasswd = subprocess.run(["htpasswd", "-Bbn", user, password], check=True, capture_output=True, text=True).stdout
            (root / "htpasswd").write_text(htpasswd)
            config["auth"] = {"htpasswd": {"realm": "nimify-test", "path": str(root / "htpasswd")}}
        (root / "config.yml").write_text(json.dumps(config))
        self.proc = subprocess.Popen(["docker-registry", "serve", str(root / "config.yml")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                requests.get(f"{self.url}/v2/", timeout=1, verify=str(root / "cert.pem") if tls else True)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("docker-registry did not start")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def tags(self, name, auth=None):
        r = requests.get(f"{self.url}/v2/{name}/tags/list", auth=auth, timeout=5, verify=str(self.root / "cert.pem") if self.url.startswith("https") else True)
        return r.json().get("tags") if r.status_code == 200 else None


@pytest.fixture
def registry(tmp_path):
    started = []

    def start(**kw):
        reg = Registry(tmp_path, **kw)
        started.append(reg)
        return reg

    yield start
    for reg in started:
        reg.stop()


def test_push_to_a_plain_http_registry(registry):
    reg = registry()
    target = f"docker://127.0.0.1:{reg.port}/nimify/iris:v1"
    pushed = nimify_image(IRIS, "--output", target, "--insecure").result
    assert pushed["reference"] == target
    assert skopeo_inspect(target, "--tls-verify=false")["Digest"] == pushed["digest"]
    # Pushing again uploads nothing new and gives the same digest.
    again = nimify_image(IRIS, "--output", target, "--insecure")
    assert again.result["digest"] == pushed["digest"] and "Exists" in again.stderr
    record = json.load(open(os.path.join(TARGET, "nimify", "example-iris", "image.json")))
    assert record["repository"] == f"127.0.0.1:{reg.port}/nimify/iris" and record["digest"] == pushed["digest"]


def test_push_with_basic_auth_over_tls_with_a_self_signed_certificate(registry):
    reg = registry(tls=True, user="nimify", password="s3cret")
    target = f"docker://127.0.0.1:{reg.port}/iris:secure"
    cert = str(reg.root / "cert.pem")
    # Without credentials, with wrong ones, without trusting the certificate: clear errors, no tag.
    missing = nimify_image(IRIS, "--output", target, "--ca-cert", cert, check=False)
    assert missing.returncode == 1 and "requires credentials" in missing.stderr and "--creds" in missing.stderr, missing.stderr
    wrong = nimify_image(IRIS, "--output", target, "--ca-cert", cert, "--creds", "nimify:wrong", check=False)
    assert wrong.returncode == 1 and 'rejected the credentials of user "nimify"' in wrong.stderr, wrong.stderr
    untrusted = nimify_image(IRIS, "--output", target, "--creds", "nimify:s3cret", check=False)
    assert untrusted.returncode == 1 and "--ca-cert" in untrusted.stderr, untrusted.stderr
    assert reg.tags("iris", auth=("nimify", "s3cret")) is None
    pushed = nimify_image(IRIS, "--output", target, "--ca-cert", cert, "--creds", "nimify:s3cret").result
    info = skopeo_inspect(target, "--cert-dir", str(reg.root / "certs"), "--creds", "nimify:s3cret")
    assert info["Digest"] == pushed["digest"]
    assert reg.tags("iris", auth=("nimify", "s3cret")) == ["secure"]


def image_with(env, *args):
    """`cargo nimify image --no-build` of the iris example with its own environment."""
    full = {**os.environ, **env}
    for k in [k for k, v in env.items() if v is None]:
        full.pop(k)
    return subprocess.run([BIN, "nimify", "image", "--profile", "dev", "--no-build", "--format", "json", *args],
                          cwd=IRIS, env=full, capture_output=True, text=True, timeout=600)


def test_a_loopback_registry_needs_no_insecure_flag_and_big_blobs_go_in_chunks(registry):
    reg = registry()
    target = f"docker://127.0.0.1:{reg.port}/nimify/iris:chunked"
    # 1 MiB chunks: every layer but the model's goes up in several PATCH requests.
    r = image_with({"NIMIFY_UPLOAD_CHUNK_BYTES": str(1 << 20)}, "--output", target)
    assert r.returncode == 0, r.stderr
    pushed = json.loads(r.stdout)
    assert skopeo_inspect(target, "--tls-verify=false")["Digest"] == pushed["digest"]
    # skopeo can copy every blob back out, byte for byte (it checks each digest).
    out = reg.root / "copy"
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", target, f"oci:{out}:x"], check=True, capture_output=True)
    # Another host than loopback is never tried over plain HTTP without --insecure.
    r = image_with({}, "--output", f"docker://nimify-test.invalid:{reg.port}/iris:x")
    assert r.returncode == 1 and "cannot reach registry nimify-test.invalid" in r.stderr and "--insecure" in r.stderr, r.stderr


class CutOnce:
    """A loopback TCP proxy to `port` that, once `at` bytes have gone through, breaks the
    connection that starts the next chunk upload (a `PATCH`), before forwarding any of it; later
    connections pass untouched; with `mid_body`, the connection carrying byte `at`, whatever it
    is in the middle of. (A break in the middle of a PATCH body makes docker-registry drop
    the whole session, BLOB_UPLOAD_INVALID, and the client rightly starts that blob again; a
    break between chunks leaves a session to resume.)"""

    def __init__(self, port, at, mid_body=False):
        import socket
        import threading
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.sent, self.cut, self.lock = 0, False, threading.Lock()

        def pipe(src, dst, upstream):
            try:
                while data := src.recv(65536):
                    if upstream:
                        with self.lock:
                            cut_now = not self.cut and self.sent >= at and (mid_body or data.startswith(b"PATCH "))
                            self.cut = self.cut or cut_now
                            self.sent += 0 if cut_now else len(data)
                        if cut_now:
                            break
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

        def accept():
            while True:
                try:
                    client, _ = self.listener.accept()
                except OSError:
                    return
                server = socket.create_connection(("127.0.0.1", port))
                threading.Thread(target=pipe, args=(client, server, True), daemon=True).start()
                threading.Thread(target=pipe, args=(server, client, False), daemon=True).start()

        threading.Thread(target=accept, daemon=True).start()

    def close(self):
        self.listener.close()


@pytest.mark.parametrize("mid_body", [False, True], ids=["between-chunks", "mid-chunk"])
def test_a_connection_broken_mid_upload_resumes_where_the_registry_stands(registry, mid_body):
    reg = registry()
    # 5 MiB in: inside the ONNX Runtime layer (after the 2.2 MiB libraries layer and two of its
    # 1 MiB chunks), so the registry holds part of it when the connection breaks.
    proxy = CutOnce(reg.port, at=5 << 20, mid_body=mid_body)
    try:
        target = f"docker://127.0.0.1:{proxy.port}/nimify/iris:resumed"
        r = image_with({"NIMIFY_UPLOAD_CHUNK_BYTES": str(1 << 20)}, "--output", target, "-v")
    finally:
        proxy.close()
    assert proxy.cut, "the proxy broke a connection"
    assert r.returncode == 0, r.stderr
    assert "Retrying" in r.stderr, r.stderr
    # Between chunks it goes on from what the registry holds; a chunk broken mid-body makes
    # docker-registry drop the session (BLOB_UPLOAD_INVALID), so that blob starts again.
    resumed = re.search(r"Resuming sha256:\w+ at byte (\d+)", r.stderr)
    if mid_body:
        assert resumed is None, r.stderr
    else:
        assert resumed and int(resumed.group(1)) >= 1 << 20, r.stderr
    pushed = json.loads(r.stdout)
    direct = f"docker://127.0.0.1:{reg.port}/nimify/iris:resumed"
    assert skopeo_inspect(direct, "--tls-verify=false")["Digest"] == pushed["digest"]
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", direct, f"oci:{reg.root / 'copy'}:x"], check=True, capture_output=True)


def test_a_base_image_from_a_registry_by_tag_digest_or_platform_index(registry, tmp_path):
    reg = registry()
    host = f"127.0.0.1:{reg.port}"
    # Two different images to serve as bases (SOURCE_DATE_EPOCH changes every layer).
    for tag, epoch in (("amd", "0"), ("other", "86400")):
        r = image_with({"SOURCE_DATE_EPOCH": epoch}, "--output", f"oci:{tmp_path / 'bases'}:{tag}")
        assert r.returncode == 0, r.stderr
        subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{tmp_path / 'bases'}:{tag}", f"docker://{host}/base:{tag}"],
                       check=True, capture_output=True)
    amd = skopeo_inspect(f"docker://{host}/base:amd", "--tls-verify=false")
    other = skopeo_inspect(f"docker://{host}/base:other", "--tls-verify=false")
    assert amd["Layers"] != other["Layers"]
    # An index naming the other image for linux/arm64 and ours for this machine (linux/amd64).
    def descriptor(tag, arch):
        raw = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", f"docker://{host}/base:{tag}"], check=True, capture_output=True).stdout
        return {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + hashlib.sha256(raw).hexdigest(),
                "size": len(raw), "platform": {"os": "linux", "architecture": arch}}
    here = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    elsewhere = "riscv64"
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": [descriptor("other", elsewhere), descriptor("amd", here)]}
    put = requests.put(f"{reg.url}/v2/base/manifests/multi", data=json.dumps(index),
                       headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}, timeout=10)
    assert put.status_code == 201, put.text
    for base in (f"docker://{host}/base:amd", f"docker://{host}/base@{amd['Digest']}", f"docker://{host}/base:multi"):
        out = tmp_path / "on-base"
        r = image_with({}, "--base", base, "--output", f"oci:{out}:x")
        assert r.returncode == 0, (base, r.stderr)
        layers = skopeo_inspect(f"oci:{out}:x")["Layers"]
        assert layers[:4] == amd["Layers"] and len(layers) == 7, base
        assert skopeo_inspect(f"oci:{out}:x", config=True)["config"]["Labels"]["org.opencontainers.image.base.name"] == base
    # Clear errors: a tag the registry lacks, an index without this platform, a registry not there.
    r = image_with({}, "--base", f"docker://{host}/base:nope", "--output", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and "did not give manifest base:nope: 404" in r.stderr, r.stderr
    only_arm = {**index, "manifests": index["manifests"][:1]}
    requests.put(f"{reg.url}/v2/base/manifests/armonly", data=json.dumps(only_arm),
                 headers={"Content-Type": "application/vnd.oci.image.index.v1+json"}, timeout=10).raise_for_status()
    r = image_with({}, "--base", f"docker://{host}/base:armonly", "--output", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and f"has no linux/{here} image" in r.stderr, r.stderr
    r = image_with({}, "--base", f"docker://127.0.0.1:{free_port()}/base:amd", "--output", f"oci:{tmp_path / 'x'}:x")
    assert r.returncode == 1 and "cannot reach registry" in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def credential_helper(bin_dir, name, port, answer="ok"):
    """A `docker-credential-NAME` program that knows one registry, as the real helpers answer."""
    bin_dir.mkdir(exist_ok=True)
    body = {
        "ok": f"""case "$host" in 127.0.0.1:{port}) echo '{{"ServerURL":"'$host'","Username":"nimify","Secret":"s3cret"}}';;
  *) echo "credentials not found in native keychain"; exit 1;; esac""",
        "broken": 'echo "error getting credentials - err: exit status 1, out: keyring is locked" >&2; exit 1',
    }[answer]
    helper = bin_dir / f"docker-credential-{name}"
    helper.write_text(f"#!/bin/sh\nread host\n{body}\n")
    helper.chmod(0o755)


def test_credentials_come_from_docker_credential_helpers(registry, tmp_path):
    reg = registry(user="nimify", password="s3cret")
    target = f"docker://127.0.0.1:{reg.port}/iris:helped"
    config = tmp_path / "docker"
    config.mkdir()
    bin_dir = tmp_path / "bin"
    env = {"DOCKER_CONFIG": str(config), "REGISTRY_AUTH_FILE": None, "XDG_RUNTIME_DIR": None,
           "PATH": f"{bin_dir}:{os.environ['PATH']}", "NIMIFY_REGISTRY_CREDS": None}
    credential_helper(bin_dir, "nimifytest", reg.port)
    credential_helper(bin_dir, "locked", reg.port, answer="broken")
    cases = [
        ({"credHelpers": {f"127.0.0.1:{reg.port}": "nimifytest"}}, None),
        ({"credsStore": "nimifytest"}, None),
        ({"credsStore": "locked"}, "keyring is locked"),
        ({"credHelpers": {f"127.0.0.1:{reg.port}": "absent"}}, "docker-credential-absent"),
        ({"credHelpers": {"127.0.0.1:1": "nimifytest"}}, "requires credentials"),
    ]
    for doc, error in cases:
        (config / "config.json").write_text(json.dumps(doc))
        r = image_with(env, "--output", target)
        if error is None:
            assert r.returncode == 0, (doc, r.stderr)
            assert skopeo_inspect(target, "--tls-verify=false", "--creds", "nimify:s3cret")["Digest"] == json.loads(r.stdout)["digest"]
        else:
            assert r.returncode == 1 and error in r.stderr, (doc, r.stderr)
            assert "--creds" in r.stderr, r.stderr
    # Checked before building or packing: a refused login costs no image work.
    assert "Packed" not in r.stderr and "Reused" not in r.stderr


def test_an_unreachable_registry_is_a_clear_error():
    port = free_port()
    proc = nimify_image(IRIS, "--output", f"docker://127.0.0.1:{port}/iris:x", "--insecure", check=False)
    assert proc.returncode == 1
    assert f"cannot reach registry 127.0.0.1:{port}" in proc.stderr, proc.stderr


def test_missing_inputs_are_clear_errors_and_write_nothing(tmp_path):
    out = tmp_path / "out"
    missing_bin = nimify_image(IRIS, "--no-build", "--profile", "never-built", "--output", f"oci:{out}", check=False)
    assert missing_bin.returncode == 1 and "binary" in missing_bin.stderr and "not found" in missing_bin.stderr and "cargo nimify build" in missing_bin.stderr
    with swapped(os.path.join(IRIS, "iris.onnx"), None):
        missing_model = nimify_image(IRIS, "--no-build", "--output", f"oci:{out}", check=False)
    assert missing_model.returncode == 1 and "iris.onnx" in missing_model.stderr and "not found" in missing_model.stderr, missing_model.stderr
    bad_output = nimify_image(IRIS, "--no-build", "--output", "containers-storage:iris", check=False)
    assert bad_output.returncode == 1 and "oci:DIR[:TAG]" in bad_output.stderr
    for proc in (missing_bin, missing_model, bad_output):
        # --format json: the report on stderr for people, the error object on stdout for programs.
        assert proc.stderr.startswith("error: ") and json.loads(proc.stdout)["error"]["message"] in proc.stderr, proc.stderr
    assert not out.exists() and os.listdir(tmp_path) == []
    # No staging directory is left behind either.
    state = os.path.join(TARGET, "nimify", "example-iris")
    assert not [d for d in os.listdir(state) if d.startswith("staging-")]


def test_build_reports_the_executable():
    proc = subprocess.run([BIN, "nimify", "build", "--profile", "dev", "--format", "json"], cwd=IRIS, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["package"] == "example-iris" and out["executable"] == os.path.join(TARGET, "debug", "example-iris")
