"""Generates the example models (run by `cargo xtask models`; each well under 1 MB):

- pipeline/models/scaler.onnx: `raw: float[batch, 4]` -> `scaled` (standardise with fixed stats);
- pipeline/models/scorer.onnx: `features: float[batch, 4]` -> `score: float[batch, 1]`;
- recurrent/models/gru.onnx: a GRU with `x: float[seq, batch, 3]` and an initial state
  `h0: float[1, batch, 8]` -> `y: float[seq, 1, batch, 8]`, `h: float[1, batch, 8]`.

examples/iris/iris.onnx is written by tests/models/make_models.py (the ZipMap classifier).
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else None
RNG = np.random.default_rng(7)
OPSET = [helper.make_opsetid("", 17)]


def save(model, rel):
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = os.path.join(OUT, os.path.basename(rel)) if OUT else os.path.join(HERE, rel)
    onnx.save(model, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def scaler():
    mean = numpy_helper.from_array(np.array([5.8, 3.0, 3.8, 1.2], np.float32), "mean")
    std = numpy_helper.from_array(np.array([0.8, 0.4, 1.8, 0.8], np.float32), "std")
    graph = helper.make_graph(
        [helper.make_node("Sub", ["raw", "mean"], ["centered"]), helper.make_node("Div", ["centered", "std"], ["scaled"])],
        "scaler",
        [helper.make_tensor_value_info("raw", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 4])],
        [mean, std],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "pipeline/models/scaler.onnx")


def scorer():
    w = numpy_helper.from_array(RNG.standard_normal((4, 1)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.array([0.1], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["features", "w", "b"], ["logit"]), helper.make_node("Sigmoid", ["logit"], ["score"])],
        "scorer",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", 1])],
        [w, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "pipeline/models/scorer.onnx")


def gru():
    hidden, inputs = 8, 3
    w = numpy_helper.from_array((RNG.standard_normal((1, 3 * hidden, inputs)) * 0.5).astype(np.float32), "W")
    r = numpy_helper.from_array((RNG.standard_normal((1, 3 * hidden, hidden)) * 0.5).astype(np.float32), "R")
    b = numpy_helper.from_array(np.zeros((1, 6 * hidden), np.float32), "B")
    graph = helper.make_graph(
        [helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"], ["y", "h"], hidden_size=hidden)],
        "gru",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["seq", "batch", inputs]),
            helper.make_tensor_value_info("h0", TensorProto.FLOAT, [1, "batch", hidden]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["seq", 1, "batch", hidden]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, "batch", hidden]),
        ],
        [w, r, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-examples"), "recurrent/models/gru.onnx")


if __name__ == "__main__":
    scaler()
    scorer()
    gru()
