"""Zero-code images: `cargo nimify image --model x.onnx` packs the generic server (this very
`cargo-nimify`, running `nimify serve`) with one model, no crate to write; `chart` and `deploy`
take the same `--model`. Run for real: podman runs the image, ONNX Runtime in Python checks its
answers."""

import json
import os
import shutil
import subprocess

import numpy as np
import onnxruntime as ort
import requests

from conftest import BIN, MODELS, Container, skopeo_inspect


def nimify(cwd, *args):
    return subprocess.run([BIN, "nimify", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_an_image_from_a_model_file_alone_serves_it_and_deploys(tmp_path):
    shutil.copy(os.path.join(MODELS, "mlp.onnx"), tmp_path / "Iris Net.onnx")
    model = "Iris Net.onnx"
    # What an interrupted run (Ctrl-C, SIGKILL) left behind is removed; a live process's is kept.
    state = tmp_path / "target/nimify/iris-net"
    dead = subprocess.Popen(["true"])
    dead.wait()
    for leftover in (f"staging-{dead.pid}", f".oci.tmp-{dead.pid}", f"staging-{os.getpid()}"):
        (state / leftover / "blobs").mkdir(parents=True)
        (state / leftover / "blobs" / "partial").write_bytes(b"x" * 1000)
    r = nimify(tmp_path, "image", "--model", model, "--format", "json")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in state.iterdir() if "staging" in p.name or ".tmp-" in p.name) == [f"staging-{os.getpid()}"]
    result = json.loads(r.stdout)
    sha = subprocess.run(["sha256sum", str(tmp_path / model)], capture_output=True, text=True, check=True).stdout.split()[0]
    # Named after the file (lower case, as image names must be), tagged by the model's digest.
    assert result["reference"] == f"oci:{tmp_path / 'target/nimify/iris-net/oci'}:sha-{sha[:12]}"
    config = skopeo_inspect(result["reference"], config=True)["config"]
    assert config["Entrypoint"] == ["/opt/nimify/bin/cargo-nimify", "nimify", "serve", "/opt/nimify/models/Iris Net.onnx"]
    assert config["Labels"]["io.nimify.model.sha256"] == sha
    record = json.load(open(tmp_path / "target/nimify/iris-net/image.json"))
    assert record["digest"] == result["digest"] and record["models"][0]["name"] == "Iris Net"

    # The container answers as ONNX Runtime does, under the chart's hardening (read-only, non-root).
    container = Container(result["reference"])
    try:
        x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], np.float32)
        body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": x.flatten().tolist()}]}
        answer = requests.post(f"{container.url}/v2/models/Iris Net/infer", json=body, timeout=10)
        assert answer.status_code == 200, answer.text
        outputs = {o["name"]: np.array(o["data"], np.float32).reshape(o["shape"]) for o in answer.json()["outputs"]}
        expected = ort.InferenceSession(str(tmp_path / model)).run(None, {"x": x})
        np.testing.assert_allclose(outputs["probs"], expected[0], rtol=1e-5, atol=1e-6)
    finally:
        container.remove()

    # chart and deploy take the same --model; any environment name is its own namespace.
    r = nimify(tmp_path, "chart", "--model", model, "--format", "json")
    assert r.returncode == 0, r.stderr
    chart = json.loads(r.stdout)
    assert chart["name"] == "iris-net" and chart["image"].endswith(result["digest"]), chart
    values = open(os.path.join(chart["chart"], "values.yaml")).read()
    assert result["digest"] in values and "Iris Net" in values
    r = nimify(tmp_path, "deploy", "--model", model, "--env", "staging", "--dry-run", "--helm-version", "4", "--format", "json")
    assert r.returncode == 0, r.stderr
    upgrade, test = json.loads(r.stdout)["commands"]
    assert upgrade[:4] == ["helm", "upgrade", "--install", "iris-net"] and upgrade[upgrade.index("--namespace") + 1] == "staging"
    assert test == ["helm", "test", "iris-net", "--namespace", "staging"]


def test_model_mode_errors_are_clear(tmp_path):
    r = nimify(tmp_path, "image", "--model", "absent.onnx")
    assert r.returncode == 1 and "model file absent.onnx not found" in r.stderr, r.stderr
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    r = nimify(tmp_path, "image", "--model", "junk.onnx")
    assert r.returncode == 1 and "not an ONNX model" in r.stderr, r.stderr
    r = nimify(tmp_path, "build", "--model", "junk.onnx")
    assert r.returncode == 1 and "nothing to build" in r.stderr, r.stderr
    r = nimify(tmp_path, "image", "--model", "junk.onnx", "--package", "x")
    assert r.returncode == 2 and "cannot be used with" in r.stderr, r.stderr
    # Nothing was written for the failures.
    assert not (tmp_path / "target").exists()
