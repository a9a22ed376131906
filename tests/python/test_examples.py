"""The example services end to end: each typed answer and its V2 counterpart against the same
computation in Python (scikit-learn, ONNX Runtime), and each OpenAPI document validated."""

import json
import os
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import requests
from openapi_spec_validator import validate

from conftest import Container, MODELS, ROOT, Service, TARGET

EXAMPLES = os.path.join(ROOT, "examples")


@pytest.fixture(scope="module", params=["binary", "image"])
def example(request, example_image):
    """Each example's URL, served once by its debug binary and once by its OCI image run with
    podman (read-only root, user 65532, no capabilities), so every answer below is checked in
    both; the image's `healthcheck` subcommand must pass inside the container and `podman stop`
    must end it gracefully (exit 0, the drain logged)."""
    services = {}

    def start(name):
        if name not in services:
            if request.param == "binary":
                binary = os.path.join(TARGET, "debug", f"example-{name}")
                assert os.path.exists(binary), f"{binary} missing: `cargo xtask test` builds the examples"
                services[name] = Service([binary, "--host", "127.0.0.1", "--port", "0"])
            else:
                services[name] = Container(example_image(name)[0])
        return services[name].url

    def grpc(name):
        """The gRPC address of an example started with `start`."""
        service = services[name]
        return service.grpc_address if isinstance(service, Service) else f"127.0.0.1:{service.grpc_port}"

    start.grpc = grpc
    yield start
    for name, service in services.items():
        if isinstance(service, Container):
            try:
                health = service.exec(f"example-{name}", "healthcheck")
                assert health.returncode == 0, health.stdout + health.stderr
                assert service.stop() == 0, service.logs()
                assert "draining in-flight requests" in service.logs()
            finally:
                service.remove()
        else:
            assert service.stop() == 0


def v2(url, model, name, arr, datatype="FP32"):
    body = {"inputs": [{"name": name, "shape": list(arr.shape), "datatype": datatype, "data": arr.flatten().tolist()}]}
    r = requests.post(f"{url}/v2/models/{model}/infer", json=body, timeout=10)
    assert r.status_code == 200, r.text
    return {o["name"]: o for o in r.json()["outputs"]}


def test_openapi_documents_are_valid(example):
    for name in ("iris", "pipeline", "recurrent", "image", "text"):
        url = example(name)
        validate(requests.get(f"{url}/openapi.json", timeout=5).json())


def iris_reference(rows):
    """What the committed examples/iris/iris.onnx must answer for `rows`, two ways and never from a
    new training run: ONNX Runtime in Python on the same file, and scikit-learn's formula for a
    multinomial logistic regression (softmax of x·Wᵀ + b) in float64 over the coefficients stored
    in the file. Returns (labels, probabilities from ONNX Runtime, probabilities from the formula)."""
    import onnx

    path = os.path.join(EXAMPLES, "iris", "iris.onnx")
    labels, zipmap = ort.InferenceSession(path).run(["output_label", "output_probability"], {"X": rows})
    [node] = [n for n in onnx.load(path).graph.node if n.op_type == "LinearClassifier"]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    assert attrs["post_transform"] == b"SOFTMAX" and attrs["classlabels_ints"] == [0, 1, 2]
    w = np.array(attrs["coefficients"], np.float64).reshape(3, -1)
    logits = rows.astype(np.float64) @ w.T + np.array(attrs["intercepts"], np.float64)
    formula = np.exp(logits - logits.max(axis=1, keepdims=True))
    formula /= formula.sum(axis=1, keepdims=True)
    return labels, np.array([[row[k] for k in range(3)] for row in zipmap]), formula


# The service runs the same file with the same ONNX Runtime version as Python does, so only the
# order of float32 additions can differ (thread count, kernels): a few ulps of a logit of
# magnitude ~20 (float32 eps 1.2e-7) is ~5e-6 after softmax, relative to each probability.
SAME_MODEL_RTOL = 1e-5
# ONNX Runtime computes in float32 and the formula in float64: logits of magnitude ~20 carry an
# absolute error of ~20 x 1.2e-7 before softmax, so probabilities agree to about 1e-5.
FLOAT32_VS_FLOAT64_ATOL = 1e-5


def test_iris_matches_onnx_runtime_and_the_stored_coefficients(example):
    url = example("iris")
    from sklearn.datasets import load_iris

    rows = load_iris().data[::10].astype(np.float32)
    labels, want, formula = iris_reference(rows)
    np.testing.assert_allclose(want, formula, atol=FLOAT32_VS_FLOAT64_ATOL)
    assert labels.tolist() == formula.argmax(axis=1).tolist()
    r = requests.post(f"{url}/v1/models/iris/predict", json={"measurements": rows.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    names = ["setosa", "versicolor", "virginica"]
    for pred, p, label in zip(r.json()["predictions"], want, labels):
        assert pred["species"] == names[label]
        np.testing.assert_allclose([pred["probabilities"][n] for n in names], p, rtol=SAME_MODEL_RTOL)
    out = v2(url, "iris", "X", rows)
    got = [json.loads(row) for row in out["output_probability"]["data"]]
    np.testing.assert_allclose([[row[str(k)] for k in range(3)] for row in got], want, rtol=SAME_MODEL_RTOL)
    assert out["output_label"]["data"] == labels.tolist()
    r = requests.post(f"{url}/v1/models/iris/predict", json={"measurements": [[1, 2, 3]]}, timeout=10)
    assert r.status_code == 422 and "measurements" in r.json()["error"]
    # The typed model is reachable over gRPC like any model, through the same queue.
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(example.grpc("iris"))
    x = grpcclient.InferInput("X", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows)
    before = requests.get(f"{url}/v2/models/iris/stats", timeout=5).json()["model_stats"][0]["inference_stats"]["success"]["count"]
    result = client.infer("iris", [x])
    assert result.as_numpy("output_label").tolist() == labels.tolist()
    got = [json.loads(row) for row in result.as_numpy("output_probability")]
    np.testing.assert_allclose([[row[str(k)] for k in range(3)] for row in got], want, rtol=SAME_MODEL_RTOL)
    after = requests.get(f"{url}/v2/models/iris/stats", timeout=5).json()["model_stats"][0]["inference_stats"]["success"]["count"]
    assert after == before + 1


def test_pipeline_matches_both_models_chained_in_onnx_runtime(example):
    url = example("pipeline")
    rows = np.random.default_rng(3).uniform(0, 8, (5, 4)).astype(np.float32)
    scaler = ort.InferenceSession(os.path.join(EXAMPLES, "pipeline", "models", "scaler.onnx"))
    scorer = ort.InferenceSession(os.path.join(EXAMPLES, "pipeline", "models", "scorer.onnx"))
    want = scorer.run(None, {"features": scaler.run(None, {"raw": rows})[0]})[0].reshape(-1)
    r = requests.post(f"{url}/v1/models/pipeline/predict", json={"rows": rows.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["scores"], want, rtol=1e-6)
    scaled = v2(url, "scaler", "raw", rows)["scaled"]["data"]
    score = v2(url, "scorer", "features", np.array(scaled, np.float32).reshape(5, 4))["score"]["data"]
    np.testing.assert_allclose(score, want, rtol=1e-6)


def test_recurrent_state_round_trip_matches_onnx_runtime(example):
    url = example("recurrent")
    sess = ort.InferenceSession(os.path.join(EXAMPLES, "recurrent", "models", "gru.onnx"))
    rng = np.random.default_rng(4)
    x1, x2 = rng.standard_normal((3, 2, 3)).astype(np.float32), rng.standard_normal((5, 2, 3)).astype(np.float32)
    h0 = np.zeros((1, 2, 8), np.float32)
    y1, h1 = sess.run(None, {"x": x1, "h0": h0})
    y2, h2 = sess.run(None, {"x": x2, "h0": h1})
    r = requests.post(f"{url}/v1/models/gru/predict", json={"x": x1.tolist(), "h0": h0.tolist()}, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["y"], y1, rtol=1e-5, atol=1e-6)
    # The client carries the state: send `h` back as `h0` with a sequence of another length.
    r = requests.post(f"{url}/v1/models/gru/predict", json={"x": x2.tolist(), "h0": r.json()["h"]}, timeout=10)
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["h"], h2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(r.json()["y"]).shape, y2.shape)
    # `batch` must agree between x and h0.
    r = requests.post(f"{url}/v1/models/gru/predict", json={"x": x1.tolist(), "h0": np.zeros((1, 3, 8)).tolist()}, timeout=10)
    assert r.status_code == 422 and "batch" in r.json()["error"], r.text


def png(pixels):
    """A minimal RGB PNG encoder (no imaging library needed): pixels is uint8 [h, w, 3]."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_image_classifier_matches_onnx_runtime_on_the_same_pixels(example):
    import base64

    url = example("image")
    labels = open(os.path.join(EXAMPLES, "image", "labels.txt")).read().split()
    sess = ort.InferenceSession(os.path.join(EXAMPLES, "image", "models", "classifier.onnx"))
    rng = np.random.default_rng(5)
    for _ in range(3):
        pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        chw = (pixels.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        want = sess.run(None, {"pixels": chw})[0][0]
        r = requests.post(f"{url}/v1/models/classifier/predict", json={"image": base64.b64encode(png(pixels)).decode(), "top_k": 4}, timeout=10)
        assert r.status_code == 200, r.text
        got = r.json()["labels"]
        order = np.argsort(-want)[:4]
        assert [g["label"] for g in got] == [labels[i] for i in order]
        np.testing.assert_allclose([g["probability"] for g in got], want[order], rtol=1e-5)
        # The same preprocessed tensor over V2 gives the same probabilities.
        np.testing.assert_allclose(v2(url, "classifier", "pixels", chw)["probs"]["data"], want, rtol=1e-5)
    # A larger image is resized in Rust; the answer is still a valid distribution.
    big = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    r = requests.post(f"{url}/v1/models/classifier/predict", json={"image": base64.b64encode(png(big)).decode(), "top_k": 10}, timeout=10)
    assert r.status_code == 200 and abs(sum(l["probability"] for l in r.json()["labels"]) - 1) < 1e-4
    r = requests.post(f"{url}/v1/models/classifier/predict", json={"image": base64.b64encode(b"not an image").decode()}, timeout=10)
    assert r.status_code == 422 and "cannot decode" in r.json()["error"]


def test_text_model_uses_the_same_tokens_as_python_tokenizers(example):
    from tokenizers import Tokenizer

    url = example("text")
    tok = Tokenizer.from_file(os.path.join(EXAMPLES, "text", "tokenizer.json"))
    sess = ort.InferenceSession(os.path.join(EXAMPLES, "text", "models", "sentiment.onnx"))
    texts = ["the service answered quickly", "Nothing worked, the deploy broke!", "unseen zebra words"]
    ids = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    seq = max(map(len, ids))
    input_ids = np.array([i + [0] * (seq - len(i)) for i in ids], np.int64)
    mask = np.array([[1] * len(i) + [0] * (seq - len(i)) for i in ids], np.int64)
    want = sess.run(None, {"input_ids": input_ids, "attention_mask": mask})[0][:, 1]
    r = requests.post(f"{url}/v1/models/sentiment/predict", json={"texts": texts}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["input_ids"] == ids
    np.testing.assert_allclose(r.json()["positive"], want, rtol=1e-5)
    body = {"inputs": [{"name": "input_ids", "shape": list(input_ids.shape), "datatype": "INT64", "data": input_ids.flatten().tolist()},
                       {"name": "attention_mask", "shape": list(mask.shape), "datatype": "INT64", "data": mask.flatten().tolist()}]}
    out = requests.post(f"{url}/v2/models/sentiment/infer", json=body, timeout=10).json()["outputs"][0]["data"]
    np.testing.assert_allclose(np.array(out).reshape(-1, 2)[:, 1], want, rtol=1e-5)
    r = requests.post(f"{url}/v1/models/sentiment/predict", json={"texts": []}, timeout=10)
    assert r.status_code == 422
