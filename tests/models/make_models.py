"""Generates the small ONNX models the test suite serves (run by `cargo xtask models`).

Every model is deterministic (fixed seeds) and well under 1 MB, and is committed next to this
script. The expected outputs in the tests never come from here: they come from ONNX Runtime run
on the same inputs at test time.
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
# Output folder: tests/models itself, or the folder given on the command line (the freshness
# test regenerates into a temporary folder and compares what matters).
OUT = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else HERE
OPSET = [helper.make_opsetid("", 17)]

# Every element type the Open Inference Protocol can carry, with its ONNX code.
DTYPES = {
    "fp32": TensorProto.FLOAT,
    "fp64": TensorProto.DOUBLE,
    "fp16": TensorProto.FLOAT16,
    "int8": TensorProto.INT8,
    "int16": TensorProto.INT16,
    "int32": TensorProto.INT32,
    "int64": TensorProto.INT64,
    "uint8": TensorProto.UINT8,
    "uint16": TensorProto.UINT16,
    "uint32": TensorProto.UINT32,
    "uint64": TensorProto.UINT64,
    "bool": TensorProto.BOOL,
    "bytes": TensorProto.STRING,
}


def save(model, name, ir_version=8):
    model.ir_version = ir_version
    onnx.checker.check_model(model)
    path = os.path.join(OUT, name)
    onnx.save(model, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def dtypes():
    """One Identity per element type but BF16 (see `bf16`), each `[batch, 2]` in and out."""
    nodes, inputs, outputs = [], [], []
    for name, code in DTYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{name}", code, ["batch", 2]))
        outputs.append(helper.make_tensor_value_info(f"out_{name}", code, ["batch", 2]))
        nodes.append(helper.make_node("Identity", [f"in_{name}"], [f"out_{name}"]))
    graph = helper.make_graph(nodes, "dtypes", inputs, outputs)
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-tests"), "dtypes.onnx")


def bf16():
    """BF16 travels only in binary: `in_bf16: bfloat16[batch, 2]` -> itself and as float."""
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["in_bf16"], ["out_bf16"]),
            helper.make_node("Cast", ["in_bf16"], ["as_fp32"], to=TensorProto.FLOAT),
        ],
        "bf16",
        [helper.make_tensor_value_info("in_bf16", TensorProto.BFLOAT16, ["batch", 2])],
        [
            helper.make_tensor_value_info("out_bf16", TensorProto.BFLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("as_fp32", TensorProto.FLOAT, ["batch", 2]),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "bf16.onnx")


def mlp():
    """`x: float[batch, 4]` -> `probs: float[batch, 3]` through a small dense layer and softmax."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(3).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Add", ["h", "b"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3]),
        ],
        [w, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-tests"), "mlp.onnx")


def fixed():
    """Fixed dims only: `image: float[1, 2, 3]` -> `doubled: float[1, 2, 3]`."""
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["image", "two"], ["doubled"])],
        "fixed",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor_value_info("doubled", TensorProto.FLOAT, [1, 2, 3])],
        [two],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "fixed.onnx")


def scalar():
    """0-d tensors: `a: float[]`, `b: int64[]` -> `sum: float[]`, `b_plus_one: int64[]`."""
    one = numpy_helper.from_array(np.array(1, dtype=np.int64), "one")
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["b"], ["b_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["a", "b_f"], ["sum"]),
            helper.make_node("Add", ["b", "one"], ["b_plus_one"]),
        ],
        "scalar",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("b", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("sum", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("b_plus_one", TensorProto.INT64, []),
        ],
        [one],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "scalar.onnx")


def multi_io():
    """Several inputs and outputs of different types and ranks, with an unknown (unnamed) dim."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["ids"], ["ids_f"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", ["ids_f", "axis1"], ["ids_col"]),
            helper.make_node("Mul", ["features", "ids_col"], ["scaled"]),
            helper.make_node("ReduceSum", ["scaled", "axis1"], ["total"], keepdims=0),
            helper.make_node("Greater", ["total", "threshold"], ["above"]),
            helper.make_node("Shape", ["features"], ["features_shape"]),
        ],
        "multi_io",
        [
            helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("ids", TensorProto.INT32, ["batch"]),
            helper.make_tensor_value_info("threshold", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info("above", TensorProto.BOOL, ["batch"]),
            helper.make_tensor_value_info("features_shape", TensorProto.INT64, [None]),
        ],
        [numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "multi_io.onnx")


def strings():
    """`text: string[n]` -> `tagged` (StringConcat), `is_word` (RegexFullMatch), `echo`."""
    suffix = numpy_helper.from_array(np.array(["#tag"], dtype=object), "suffix")
    graph = helper.make_graph(
        [
            helper.make_node("StringConcat", ["text", "suffix"], ["tagged"]),
            helper.make_node("RegexFullMatch", ["text"], ["is_word"], pattern="[a-z]+"),
            helper.make_node("Identity", ["text"], ["echo"]),
        ],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["n"])],
        [
            helper.make_tensor_value_info("tagged", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("is_word", TensorProto.BOOL, ["n"]),
            helper.make_tensor_value_info("echo", TensorProto.STRING, ["n"]),
        ],
        [suffix],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), "strings.onnx", ir_version=9)


def wrong_shape():
    """Declares `y: float[7]` but really returns `x`'s shape: outputs must follow ONNX Runtime."""
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["y"])],
        "wrong_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "wrong_shape.onnx")


def odd_names():
    """Tensor and dim names a generated identifier or URL would trip over."""
    names_in = ['input/0:x.y', "it's \"quoted\""]
    names_out = ["out:0/z", "with space.v2"]
    graph = helper.make_graph(
        [
            helper.make_node("Identity", [names_in[0]], [names_out[0]]),
            helper.make_node("Identity", [names_in[1]], [names_out[1]]),
        ],
        "odd/names",
        [
            helper.make_tensor_value_info(names_in[0], TensorProto.FLOAT, ["?", "N + 1", 3]),
            helper.make_tensor_value_info(names_in[1], TensorProto.INT64, ["batch_size*seq_len//2", None]),
        ],
        [
            helper.make_tensor_value_info(names_out[0], TensorProto.FLOAT, ["?", "N + 1", 3]),
            helper.make_tensor_value_info(names_out[1], TensorProto.INT64, ["batch_size*seq_len//2", None]),
        ],
    )
    model = helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="odd producer", producer_version="0.0.1", doc_string="odd names")
    helper.set_model_props(model, {"author": "nimify", "note": "key=value; \"quoted\""})
    save(model, "odd_names.onnx")


def external():
    """Weights in a side file: `inspect` must list the reference without reading it."""
    from onnx.external_data_helper import convert_model_to_external_data

    w = numpy_helper.from_array(np.arange(64, dtype=np.float32).reshape(8, 8), "weights")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "weights"], ["y"])],
        "external",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    # onnx appends to an existing data file: start from nothing so the output is reproducible.
    weights = os.path.join(OUT, "external.weights")
    if os.path.exists(weights):
        os.remove(weights)
    convert_model_to_external_data(model, all_tensors_to_one_file=True, location="external.weights", size_threshold=0)
    onnx.save(model, os.path.join(OUT, "external.onnx"))
    print("wrote external.onnx + external.weights")


def slow():
    """`x: float[batch, 8]`, `trips: int64[batch, 1]` -> `y: float[batch, 8]`: a Loop of
    max(trips) Sin steps over `x`. The request chooses how long the work takes (roughly a
    microsecond a step), so queueing, overload, timeout and drain tests size it from a
    measurement at test time, never from a guess about the CPU's speed."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Sin", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMax", ["trips"], ["steps"], keepdims=0),
            helper.make_node("Loop", ["steps", "", "x"], ["y"], body=body),
        ],
        "slow",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("trips", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "slow.onnx")


def batch_mismatch():
    """Declares `total: float[batch, 2]` but returns the column sums, `[1, 2]`: merged requests
    must fall back to running one by one."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axis0"], ["total"], keepdims=1)],
        "batch_mismatch",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(np.array([0], dtype=np.int64), "axis0")],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "batch_mismatch.onnx")


def wide():
    """`row: float[batch, 40]` -> `scaled`, same shape: a fixed dim above serde's 32-item arrays."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["row", "half"], ["scaled"])],
        "wide",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, ["batch", 40])],
        [helper.make_tensor_value_info("scaled", TensorProto.FLOAT, ["batch", 40])],
        [numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "wide.onnx")


def big_output():
    """`n: int64[1]` -> `y: float[n]`, every element 1.2345678e-7 (twelve characters of JSON),
    and `n_out: int64[1]` (n again): the request chooses how large the answer is, for the output
    cap and response memory tests; a request may ask for the small output only."""
    value = helper.make_tensor("value", TensorProto.FLOAT, [1], [1.2345678e-7])
    graph = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["n"], ["y"], value=value), helper.make_node("Identity", ["n"], ["n_out"])],
        "big_output",
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n"]), helper.make_tensor_value_info("n_out", TensorProto.INT64, [1])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "big_output.onnx")


def lying_shape():
    """`x: float[batch, 4]` -> `y`, declared `float[batch, 1]` but produced `float[batch, 3]`
    (a MatMul by a 4x3 matrix), as real exports declare dims they do not produce: typed services
    need a dims override, and warm-up must report the lie."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "lying_shape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(4, 3), "w")],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "lying_shape.onnx")


def odd_length():
    """`x: float[n]` reshaped to `[2, n/2]`: the default warm-up (n = 1) fails, n = 4 works."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "pairs"], ["y"])],
        "odd_length",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, None])],
        [numpy_helper.from_array(np.array([2, -1], dtype=np.int64), "pairs")],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "odd_length.onnx")


def complex64():
    """A complex64 input (nimify cannot type it: the macro must name the tensor) and a float
    output, so that exactly one tensor is refused."""
    graph = helper.make_graph(
        [helper.make_node("Shape", ["signal"], ["length"])],
        "complex",
        [helper.make_tensor_value_info("signal", TensorProto.COMPLEX64, ["n"])],
        [helper.make_tensor_value_info("length", TensorProto.INT64, [1])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "complex.onnx")


def nonfinite():
    """`x: float[n]`, `h: float16[n]` -> `log32`, `log64` (double), `log16` (float16) = log(x), and
    `h_out` = h: log(0) is -inf and log(-1) NaN, for how JSON carries non-finite outputs."""
    graph = helper.make_graph(
        [
            helper.make_node("Log", ["x"], ["log32"]),
            helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
            helper.make_node("Log", ["x64"], ["log64"]),
            helper.make_node("Cast", ["log32"], ["log16"], to=TensorProto.FLOAT16),
            helper.make_node("Identity", ["h"], ["h_out"]),
        ],
        "nonfinite",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("h", TensorProto.FLOAT16, ["n"]),
        ],
        [
            helper.make_tensor_value_info("log32", TensorProto.FLOAT, ["n"]),
            helper.make_tensor_value_info("log64", TensorProto.DOUBLE, ["n"]),
            helper.make_tensor_value_info("log16", TensorProto.FLOAT16, ["n"]),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT16, ["n"]),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "nonfinite.onnx")


def bitshift():
    """`x`, `shift: uint16[n]` -> `y = x << shift`. ONNX Runtime has a BitShift kernel for uint16
    only from 1.32 on, so serving this model shows the pinned library is the one in use."""
    graph = helper.make_graph(
        [helper.make_node("BitShift", ["x", "shift"], ["y"], direction="LEFT")],
        "bitshift",
        [
            helper.make_tensor_value_info("x", TensorProto.UINT16, ["n"]),
            helper.make_tensor_value_info("shift", TensorProto.UINT16, ["n"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.UINT16, ["n"])],
    )
    save(helper.make_model(graph, opset_imports=OPSET), "bitshift.onnx")


def train_iris():
    """The scikit-learn logistic regression behind zipmap.onnx and the iris example.

    Trained in float64 with Newton-Cholesky to a gradient tolerance of 1e-12: the fit converges
    to the optimum whatever BLAS kernel or thread count the machine picks (measured across
    OpenBLAS' Prescott, Sandybridge and Haswell kernels: coefficients agree to 5e-14 relative),
    so the float32 coefficients in the model come out the same everywhere. (lbfgs stopping at
    its default tolerance gave coefficients 1-3% apart between kernels.)"""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    return LogisticRegression(solver="newton-cholesky", tol=1e-12, max_iter=100).fit(x, y), x


def zipmap_classifier(path):
    """The iris classifier converted with skl2onnx's default ZipMap output."""
    from skl2onnx import to_onnx

    clf, x = train_iris()
    model = to_onnx(clf, x[:1].astype(np.float32), target_opset={"": 17, "ai.onnx.ml": 3})
    model.producer_name = "skl2onnx"
    # skl2onnx emits opset imports in set order (varies per run): sort them for reproducible files.
    opsets = sorted(((o.domain, o.version) for o in model.opset_import))
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(d, v) for d, v in opsets)
    onnx.checker.check_model(model)
    onnx.save(model, path)
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def tabular():
    """A churn-style classifier for drift tests: `x: float[batch, 6]` (numeric features) and
    `segment: int64[batch, 1]` (a category) -> `label: int64[batch]` (argmax) and
    `scores: float[batch, 3]` (softmax)."""
    rng = np.random.default_rng(16)
    w = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w")
    ws = numpy_helper.from_array(np.array([[0.5, -0.5, 0.0]], np.float32), "ws")
    b = numpy_helper.from_array(np.array([0.1, 0.0, -0.1], np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Cast", ["segment"], ["sf"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["sf", "ws"], ["sw"]),
        helper.make_node("Add", ["xw", "sw"], ["z0"]),
        helper.make_node("Add", ["z0", "b"], ["z"]),
        helper.make_node("Softmax", ["z"], ["scores"], axis=-1),
        helper.make_node("ArgMax", ["z"], ["label"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tabular",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6]),
            helper.make_tensor_value_info("segment", TensorProto.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 3]),
        ],
        [w, ws, b],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-tests"), "tabular.onnx")


def conv():
    """`image: float[batch, 16, 12, 12]` -> `features: float[batch, 32, 12, 12]`: two 3x3
    convolutions with ReLU. Channel counts that are multiples of 16 let ONNX Runtime's full
    optimization rewrite the graph into CPU-specific NCHWc blocks: the optimized-model cache's
    test model."""
    rng = np.random.default_rng(11)
    w1 = numpy_helper.from_array(rng.standard_normal((32, 16, 3, 3)).astype(np.float32) * 0.1, "w1")
    b1 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b1")
    w2 = numpy_helper.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32) * 0.1, "w2")
    b2 = numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "b2")
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c1"], ["r1"]),
            helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["c2"], ["features"]),
        ],
        "conv",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 16, 12, 12])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 32, 12, 12])],
        [w1, b1, w2, b2],
    )
    save(helper.make_model(graph, opset_imports=OPSET, producer_name="nimify-tests"), "conv.onnx")


def main():
    tabular()
    conv()
    dtypes()
    bf16()
    mlp()
    fixed()
    scalar()
    multi_io()
    strings()
    wrong_shape()
    odd_names()
    external()
    slow()
    batch_mismatch()
    complex64()
    odd_length()
    big_output()
    lying_shape()
    wide()
    bitshift()
    nonfinite()
    zipmap_classifier(os.path.join(OUT, "zipmap.onnx"))
    if OUT == HERE:
        zipmap_classifier(os.path.normpath(os.path.join(HERE, "..", "..", "examples", "iris", "iris.onnx")))
    # Not ONNX at all, and a real model cut short: startup must refuse both clearly.
    with open(os.path.join(OUT, "not_onnx.onnx"), "w") as f:
        f.write("this is a text file, not an ONNX model\n")
    with open(os.path.join(OUT, "mlp.onnx"), "rb") as f:
        data = f.read()
    with open(os.path.join(OUT, "truncated.onnx"), "wb") as f:
        f.write(data[: len(data) // 2])


if __name__ == "__main__":
    sys.exit(main())
