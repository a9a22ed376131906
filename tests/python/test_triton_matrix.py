"""The official `tritonclient` against a real `cargo nimify serve`: over HTTP in binary and JSON
modes and over gRPC (`tritonclient.grpc`, raw tensors), compared with ONNX Runtime run in Python
on the same inputs."""

import json
import os

import ml_dtypes
import numpy as np
import onnxruntime as ort
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conftest import MODELS

MODES = ["binary", "json", "grpc"]
RNG = np.random.default_rng(42)


def client(server):
    return httpclient.InferenceServerClient(server.address)


def reference(model, feeds):
    """ONNX Runtime's own outputs, as {name: numpy array}."""
    sess = ort.InferenceSession(os.path.join(MODELS, f"{model}.onnx"))
    names = [o.name for o in sess.get_outputs()]
    # ONNX Runtime's Python API wants str, not bytes, in string tensors.
    feeds = {
        k: (np.vectorize(lambda b: b.decode() if isinstance(b, bytes) else b, otypes=[object])(v) if v.dtype == object else v)
        for k, v in feeds.items()
    }
    if not any(arr.dtype == ml_dtypes.bfloat16 for arr in feeds.values()):
        return dict(zip(names, sess.run(names, feeds)))
    return reference_bf16(sess, feeds)


def reference_bf16(sess, feeds):
    """numpy has no bfloat16 for ONNX Runtime's Python API: bind uint16 buffers typed as bfloat16
    (shared with ONNX Runtime) for inputs and for the bf16 outputs, and read the bits back."""
    io = sess.io_binding()
    for name, arr in feeds.items():
        if arr.dtype == ml_dtypes.bfloat16:
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(arr.view(np.uint16), 16))
        else:
            io.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr))
    # The bf16 test model keeps the batch shape of its single input on every output.
    shape = next(iter(feeds.values())).shape
    buffers = {}
    for out in sess.get_outputs():
        if out.type == "tensor(bfloat16)":
            buffers[out.name] = np.zeros(shape, np.uint16)
            io.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy_with_onnx_type(buffers[out.name], 16))
        else:
            buffers[out.name] = np.zeros(shape, np.float32)
            io.bind_ortvalue_output(out.name, ort.OrtValue.ortvalue_from_numpy(buffers[out.name]))
    sess.run_with_iobinding(io)
    return {n: (b.view(ml_dtypes.bfloat16) if b.dtype == np.uint16 else b) for n, b in buffers.items()}


def triton_datatype(arr):
    if arr.dtype == ml_dtypes.bfloat16:
        return "BF16"
    return httpclient.np_to_triton_dtype(arr.dtype)


def infer(server, model, feeds, mode, outputs=None):
    if mode == "grpc":
        return infer_grpc(server, model, feeds, outputs)
    binary = mode == "binary"
    inputs = []
    for name, arr in feeds.items():
        i = httpclient.InferInput(name, list(arr.shape), triton_datatype(arr))
        # BF16 travels only in binary, in either mode.
        i.set_data_from_numpy(arr, binary_data=binary or arr.dtype == ml_dtypes.bfloat16)
        inputs.append(i)
    names = outputs or [o["name"] for o in client(server).get_model_metadata(model)["outputs"]]
    requested = []
    for n in names:
        is_bf16 = n.endswith("bf16")
        requested.append(httpclient.InferRequestedOutput(n, binary_data=binary or is_bf16))
    result = client(server).infer(model, inputs, outputs=requested, request_id="req-7")
    assert result.get_response()["id"] == "req-7"
    return {n: result.as_numpy(n) for n in names}


def infer_grpc(server, model, feeds, outputs=None):
    """The same call through `tritonclient.grpc` (raw_input_contents; outputs raw)."""
    c = grpcclient.InferenceServerClient(server.grpc_address)
    inputs = []
    for name, arr in feeds.items():
        i = grpcclient.InferInput(name, list(arr.shape), triton_datatype(arr))
        i.set_data_from_numpy(arr)
        inputs.append(i)
    names = outputs or [o.name for o in c.get_model_metadata(model).outputs]
    requested = [grpcclient.InferRequestedOutput(n) for n in names] if outputs else None
    result = c.infer(model, inputs, outputs=requested, request_id="req-7")
    assert result.get_response().id == "req-7"
    assert [o.name for o in result.get_response().outputs] == names
    return {n: result.as_numpy(n) for n in names}


def assert_same(got, want, name):
    assert got is not None, f"output {name} missing"
    if want.dtype == object:
        want = np.array([w if isinstance(w, bytes) else str(w).encode() for w in want.flat], dtype=object).reshape(want.shape)
        got = np.array([g if isinstance(g, bytes) else str(g).encode() for g in got.flat], dtype=object).reshape(got.shape)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype or want.dtype == object, f"{name}: dtype {got.dtype} != {want.dtype}"
    np.testing.assert_array_equal(got, want, err_msg=name)


def dtype_feeds(batch):
    feeds = {
        "in_fp32": RNG.standard_normal((batch, 2)).astype(np.float32),
        "in_fp64": RNG.standard_normal((batch, 2)),
        "in_fp16": RNG.standard_normal((batch, 2)).astype(np.float16),
        "in_int8": RNG.integers(-128, 127, (batch, 2), dtype=np.int8),
        "in_int16": RNG.integers(-32768, 32767, (batch, 2), dtype=np.int16),
        "in_int32": RNG.integers(-(2**31), 2**31 - 1, (batch, 2), dtype=np.int32),
        "in_int64": np.array([[-(2**63), 2**63 - 1]] * batch, dtype=np.int64),
        "in_uint8": RNG.integers(0, 255, (batch, 2), dtype=np.uint8),
        "in_uint16": RNG.integers(0, 65535, (batch, 2), dtype=np.uint16),
        "in_uint32": RNG.integers(0, 2**32 - 1, (batch, 2), dtype=np.uint32),
        "in_uint64": np.array([[0, 2**64 - 1]] * batch, dtype=np.uint64),
        "in_bool": RNG.integers(0, 2, (batch, 2)).astype(bool),
        "in_bytes": np.array([[f"row{i}".encode(), "ünïcode ✓".encode()] for i in range(batch)], dtype=object),
    }
    return feeds


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 3])
def test_every_element_type(serve, mode, batch):
    server = serve("dtypes")
    feeds = dtype_feeds(batch)
    got = infer(server, "dtypes", feeds, mode)
    want = reference("dtypes", feeds)
    for name, w in want.items():
        assert_same(got[name], w, name)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [1, 4])
def test_bf16_in_binary(serve, mode, batch):
    server = serve("bf16")
    feeds = {"in_bf16": RNG.standard_normal((batch, 2)).astype(ml_dtypes.bfloat16)}
    got = infer(server, "bf16", feeds, mode)
    want = reference("bf16", feeds)
    assert got["out_bf16"].dtype == ml_dtypes.bfloat16
    assert_same(got["out_bf16"], want["out_bf16"], "out_bf16")
    assert_same(got["as_fp32"], want["as_fp32"], "as_fp32")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("batch", [0, 1, 5])
def test_dynamic_batch_including_empty(serve, mode, batch):
    server = serve("mlp")
    feeds = {"x": RNG.standard_normal((batch, 4)).astype(np.float32)}
    got = infer(server, "mlp", feeds, mode)
    want = reference("mlp", feeds)
    for name in ("probs", "logits"):
        assert got[name].shape == (batch, 3)
        np.testing.assert_allclose(got[name], want[name], rtol=0, atol=0)


@pytest.mark.parametrize("mode", MODES)
def test_fixed_dims(serve, mode):
    server = serve("fixed")
    feeds = {"image": RNG.standard_normal((1, 2, 3)).astype(np.float32)}
    assert_same(infer(server, "fixed", feeds, mode)["doubled"], reference("fixed", feeds)["doubled"], "doubled")


@pytest.mark.parametrize("mode", MODES)
def test_scalars(serve, mode):
    server = serve("scalar")
    feeds = {"a": np.array(1.5, dtype=np.float32), "b": np.array(41, dtype=np.int64)}
    got = infer(server, "scalar", feeds, mode)
    want = reference("scalar", feeds)
    for name in ("sum", "b_plus_one"):
        assert got[name].shape == ()
        assert_same(got[name], want[name], name)


@pytest.mark.parametrize("mode", MODES)
def test_several_inputs_and_outputs_with_selection(serve, mode):
    server = serve("multi_io")
    feeds = {
        "features": RNG.standard_normal((4, 3)).astype(np.float32),
        "ids": np.array([1, 2, 3, 4], dtype=np.int32),
        "threshold": np.array(0.5, dtype=np.float32),
    }
    want = reference("multi_io", feeds)
    got = infer(server, "multi_io", feeds, mode)
    for name, w in want.items():
        assert_same(got[name], w, name)
    # Only the outputs asked for, in the order asked for.
    subset = infer(server, "multi_io", feeds, mode, outputs=["above", "total"])
    assert list(subset) == ["above", "total"]
    assert_same(subset["above"], want["above"], "above")


@pytest.mark.parametrize("mode", MODES)
def test_string_tensors(serve, mode):
    server = serve("strings")
    feeds = {"text": np.array([b"hello", "gr\u00fc\u00dfe".encode(), b"", b"MiXeD 123"], dtype=object)}
    got = infer(server, "strings", feeds, mode)
    want = reference("strings", feeds)
    for name in ("tagged", "is_word", "echo"):
        assert_same(got[name], want[name], name)


@pytest.mark.parametrize("mode", MODES)
def test_output_shape_comes_from_onnx_runtime(serve, mode):
    server = serve("wrong_shape")
    feeds = {"x": RNG.standard_normal((3, 2)).astype(np.float32)}
    got = infer(server, "wrong_shape", feeds, mode)
    assert got["y"].shape == (3, 2)
    assert_same(got["y"], reference("wrong_shape", feeds)["y"], "y")


@pytest.mark.parametrize("mode", MODES)
def test_odd_tensor_names(serve, mode):
    server = serve("odd_names")
    feeds = {
        "input/0:x.y": RNG.standard_normal((2, 5, 3)).astype(np.float32),
        "it's \"quoted\"": np.arange(6, dtype=np.int64).reshape(2, 3),
    }
    got = infer(server, "odd_names", feeds, mode)
    want = reference("odd_names", feeds)
    for name, w in want.items():
        assert_same(got[name], w, name)


@pytest.mark.parametrize("mode", MODES)
def test_zipmap_classifier(serve, mode):
    server = serve("zipmap")
    meta = client(server).get_model_metadata("zipmap")
    outputs = {o["name"]: o for o in meta["outputs"]}
    assert outputs["output_probability"]["datatype"] == "BYTES"
    x = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]], dtype=np.float32)
    got = infer(server, "zipmap", {"X": x}, mode)
    sess = ort.InferenceSession(os.path.join(MODELS, "zipmap.onnx"))
    labels, probs = sess.run(None, {"X": x})
    np.testing.assert_array_equal(got["output_label"], labels)
    rows = [json.loads(b) for b in got["output_probability"]]
    assert len(rows) == len(probs)
    for row, want in zip(rows, probs):
        assert {int(k): v for k, v in row.items()} == pytest.approx(want, abs=0)


@pytest.mark.parametrize("mode", MODES)
def test_an_operator_only_the_pinned_onnx_runtime_has(serve, mode):
    """BitShift on uint16 exists from ONNX Runtime 1.32 on: the server runs the pinned library."""
    feeds = {"x": np.array([1, 3, 65535, 7], np.uint16), "shift": np.array([2, 4, 1, 0], np.uint16)}
    got = infer(serve("bitshift"), "bitshift", feeds, mode)
    np.testing.assert_array_equal(got["y"], np.array([4, 48, 65534, 7], np.uint16))
    np.testing.assert_array_equal(got["y"], reference("bitshift", feeds)["y"])


@pytest.mark.parametrize("mode", MODES)
def test_non_finite_outputs_reach_the_client(serve, mode):
    """In JSON, NaN and infinities travel as the strings "NaN", "Infinity", "-Infinity";
    tritonclient turns them back into floats either way."""
    feeds = {"x": np.array([0.0, -1.0, 1.0], np.float32), "h": np.array([1.5, 0.0, -2.0], np.float16)}
    got = infer(serve("nonfinite"), "nonfinite", feeds, mode)
    for name, want in reference("nonfinite", feeds).items():
        np.testing.assert_array_equal(got[name], want, err_msg=name)
        assert got[name].dtype == want.dtype, name


def test_metadata_and_config(serve):
    server = serve("mlp")
    c = client(server)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("mlp")
    meta = c.get_model_metadata("mlp")
    assert meta["platform"] == "onnxruntime_onnx" and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    # Batching is on by default for a model whose every tensor has a dynamic dim 0: Triton's
    # convention then leaves the batch dim out of `dims`.
    config = c.get_model_config("mlp")
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 0}
    assert config["input"] == [{"name": "x", "data_type": "TYPE_FP32", "dims": [4]}]
    # A model with a scalar input cannot batch: full dims, max_batch_size 0.
    scalar = client(serve("scalar")).get_model_config("scalar")
    assert scalar["max_batch_size"] == 0 and "dynamic_batching" not in scalar
    assert c.get_model_metadata("mlp", model_version="1")["name"] == "mlp"
