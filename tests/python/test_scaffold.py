"""`cargo nimify new` / `init` from an empty directory: the crate builds and serves with
`cargo run`, a model with another signature is refused at start, and editing the model file
makes `cargo build` expand `#[nimify]` again. Builds share the workspace's target directory."""

import os
import shutil
import subprocess

import requests

from conftest import BIN, MODELS, ROOT, Service, TARGET

CARGO = os.environ.get("CARGO", "cargo")
ENV = dict(os.environ, CARGO_TARGET_DIR=TARGET, CARGO_TERM_COLOR="never")


def nimify(*args, cwd):
    return subprocess.run([BIN, "nimify", *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def build(crate):
    # The workspace's lock file keeps dependency versions (and so compiled artifacts) shared.
    shutil.copy(os.path.join(ROOT, "Cargo.lock"), os.path.join(crate, "Cargo.lock"))
    r = subprocess.run([CARGO, "build", "-q"], cwd=crate, env=ENV, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stderr
    return os.path.join(TARGET, "debug", os.path.basename(crate))


def running(binary, *args):
    return Service([binary, "--host", "127.0.0.1", "--port", "0", *args])


def test_new_builds_serves_refuses_a_swapped_model_and_rebuilds_on_edit(tmp_path):
    r = nimify("new", "mlpsvc", "--model", os.path.join(MODELS, "mlp.onnx"), "--no-interactive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    crate = tmp_path / "mlpsvc"
    assert (crate / "models" / "mlp.onnx").is_file() and (crate / "build.rs").is_file()
    binary = build(crate)

    server = running(binary)
    r = requests.post(f"{server.url}/v1/models/mlp/predict", json={"x": [[1, 2, 3, 4]]}, timeout=5)
    assert r.status_code == 200, r.text
    assert len(r.json()["probs"][0]) == 3
    r = requests.post(f"{server.url}/v1/models/mlp/predict", json={"x": [[1, 2, 3]]}, timeout=5)
    assert r.status_code == 422 and "x" in r.json()["error"]
    assert server.stop() == 0

    # A model with another signature, without rebuilding: refused, both signatures described.
    shutil.copy(os.path.join(MODELS, "fixed.onnx"), crate / "models" / "mlp.onnx")
    r = subprocess.run([binary, "--port", "0"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "signature differs" in r.stderr and '"x": float[batch, 4]' in r.stderr and '"image": float[1, 2, 3]' in r.stderr

    # Rebuilding reads the new signature: the service now takes `image`.
    binary = build(crate)
    server = running(binary)
    image = [[[1, 2, 3], [4, 5, 6]]]
    r = requests.post(f"{server.url}/v1/models/mlp/predict", json={"image": image}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == {"doubled": [[[2, 4, 6], [8, 10, 12]]]}
    assert server.stop() == 0


def test_custom_template_and_init(tmp_path):
    r = nimify("new", "customsvc", "--model", os.path.join(MODELS, "mlp.onnx"), "--template", "custom", "--no-interactive", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    binary = build(tmp_path / "customsvc")
    server = running(binary)
    for served in (1, 2):
        r = requests.post(f"{server.url}/v1/models/mlp/predict", json={"inputs": {"x": [[1, 2, 3, 4]]}}, timeout=5)
        assert r.status_code == 200, r.text
        assert r.json()["served"] == served and len(r.json()["outputs"]["probs"]) == 1
    assert server.stop() == 0

    crate = tmp_path / "initsvc"
    subprocess.run([CARGO, "init", "-q", "--name", "initsvc", str(crate)], check=True, env=ENV)
    r = nimify("init", "--model", os.path.join(MODELS, "zipmap.onnx"), "--no-interactive", cwd=crate)
    assert r.returncode == 0, r.stderr
    binary = build(crate)
    server = running(binary)
    r = requests.post(f"{server.url}/v1/models/zipmap/predict", json={"X": [[5.1, 3.5, 1.4, 0.2]]}, timeout=5)
    assert r.status_code == 200 and r.json()["output_label"] == [0], r.text
    assert server.stop() == 0
    # Running init again on a crate with code refuses rather than overwriting it.
    r = nimify("init", "--model", os.path.join(MODELS, "zipmap.onnx"), "--no-interactive", cwd=crate)
    assert r.returncode == 1 and "has your code" in r.stderr


def test_new_without_a_model_and_no_terminal_fails_clearly(tmp_path):
    r = nimify("new", "nomodel", "--no-interactive", cwd=tmp_path)
    assert r.returncode == 1 and "missing --model" in r.stderr
    assert not (tmp_path / "nomodel").exists()
