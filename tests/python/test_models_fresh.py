"""The committed models are what tests/models/make_models.py and examples/make_models.py generate
(run `cargo xtask models` after changing a script).

Bytes are the wrong measure: a trained model's coefficients come from BLAS kernels that OpenBLAS
picks per CPU at run time, so even a pinned, single-threaded run is not byte-identical on every
machine. What matters is compared instead: the graph (nodes, their order, attributes), tensor
names, element types and shapes, opsets and metadata exactly; floating-point values (initializers,
float attributes such as a linear classifier's coefficients) within `ULPS` units in the last place
of their own element type. The scripts train to convergence (see `train_iris`), so their floats
agree to far less than that between machines; a model whose floats moved further is stale.
"""

import os
import subprocess
import sys

import numpy as np
import onnx
from google.protobuf.message import Message
from onnx import numpy_helper

from conftest import MODELS, ROOT

# Float values may differ by this many units in the last place of their element type.
ULPS = 4

EXAMPLE_MODELS = ("pipeline/models/scaler.onnx", "pipeline/models/scorer.onnx", "recurrent/models/gru.onnx",
                  "image/models/classifier.onnx", "text/models/sentiment.onnx")


def floats_close(want, got, where):
    """Differences (as messages) between two float arrays, each value within ULPS of its type."""
    if want.shape != got.shape:
        return [f"{where}: shape {list(got.shape)} != committed {list(want.shape)}"]
    if want.dtype != got.dtype:
        return [f"{where}: element type {got.dtype} != committed {want.dtype}"]
    spacing = np.spacing(np.maximum(np.abs(want), np.abs(got)).astype(want.dtype))
    with np.errstate(invalid="ignore"):  # inf - inf is NaN, and NaN compares False: handled below
        off = np.abs(want.astype(np.float64) - got.astype(np.float64)) > ULPS * spacing.astype(np.float64)
    off |= np.isnan(want) != np.isnan(got)
    off |= (np.isinf(want) | np.isinf(got)) & (want != got)
    if not off.any():
        return []
    i = np.argwhere(off)[0]
    return [f"{where}: {off.sum()} of {off.size} values differ by more than {ULPS} ulps, first at {list(i)}: "
            f"{got[tuple(i)]!r} != committed {want[tuple(i)]!r}"]


def differences(want, got, where="model"):
    """Every difference between two ONNX protobuf messages that matters, as readable messages."""
    # Values stored in the model (external ones are compared with their file, field by field here).
    if isinstance(want, onnx.TensorProto) and want.data_location != onnx.TensorProto.EXTERNAL:
        a, b = numpy_helper.to_array(want), numpy_helper.to_array(got)
        if want.name != got.name or want.data_type != got.data_type or list(want.dims) != list(got.dims):
            return [f"{where}: tensor {got.name!r} {onnx.TensorProto.DataType.Name(got.data_type)}{list(got.dims)} != committed "
                    f"{want.name!r} {onnx.TensorProto.DataType.Name(want.data_type)}{list(want.dims)}"]
        if np.issubdtype(a.dtype, np.floating) and a.dtype.itemsize >= 2:
            return floats_close(a, b, f"{where} ({want.name})")
        same = a.shape == b.shape and bool(np.all(a == b))
        return [] if same else [f"{where} ({want.name}): values differ"]
    out = []
    names = sorted({f.name for f, _ in want.ListFields()} | {f.name for f, _ in got.ListFields()})
    for name in names:
        field = want.DESCRIPTOR.fields_by_name[name]
        a, b = getattr(want, name), getattr(got, name)
        path = f"{where}.{name}"
        repeated = field.is_repeated
        if field.type == field.TYPE_MESSAGE:
            pairs = list(zip(a, b)) if repeated else [(a, b)]
            if repeated and len(a) != len(b):
                out.append(f"{path}: {len(b)} entries != committed {len(a)}")
            for i, (x, y) in enumerate(pairs):
                label = f"{i} {x.name!r}" if getattr(x, "name", "") else str(i)
                out += differences(x, y, f"{path}[{label}]" if repeated else path)
        elif field.type in (field.TYPE_FLOAT, field.TYPE_DOUBLE):
            dtype = np.float32 if field.type == field.TYPE_FLOAT else np.float64
            out += floats_close(np.array(a if repeated else [a], dtype), np.array(b if repeated else [b], dtype), path)
        elif (list(a) if repeated else a) != (list(b) if repeated else b):
            out.append(f"{path}: {b!r:.80} != committed {a!r:.80}")
    return out


def load(path):
    # External data stays where it is: `external.weights` is compared as a file of its own.
    return onnx.load(path, load_external_data=False)


# Deliberately broken files, compared byte for byte like every file that is not a model.
NOT_MODELS = ("not_onnx.onnx", "truncated.onnx")


def assert_fresh(generated, committed, label):
    if generated.endswith(".onnx") and os.path.basename(generated) not in NOT_MODELS:
        diffs = differences(load(committed), load(generated))
        assert not diffs, f"{label} is stale (run `cargo xtask models`):\n  " + "\n  ".join(diffs[:10])
    else:
        with open(generated, "rb") as g, open(committed, "rb") as c:
            assert g.read() == c.read(), f"{label} is stale (run `cargo xtask models`)"


def test_committed_models_are_fresh(tmp_path):
    subprocess.run([sys.executable, os.path.join(MODELS, "make_models.py"), str(tmp_path)], check=True, capture_output=True)
    generated = sorted(os.listdir(tmp_path))
    assert "mlp.onnx" in generated and "zipmap.onnx" in generated
    assert {n for n in os.listdir(MODELS) if n.endswith((".onnx", ".weights"))} == set(generated)
    for name in generated:
        assert_fresh(str(tmp_path / name), os.path.join(MODELS, name), f"tests/models/{name}")
    assert_fresh(str(tmp_path / "zipmap.onnx"), os.path.join(ROOT, "examples", "iris", "iris.onnx"), "examples/iris/iris.onnx")


def test_committed_example_models_are_fresh(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "make_models.py"), str(tmp_path)], check=True, capture_output=True)
    assert {n for n in os.listdir(tmp_path) if n.endswith(".onnx")} == {os.path.basename(rel) for rel in EXAMPLE_MODELS}
    for rel in EXAMPLE_MODELS:
        assert_fresh(str(tmp_path / os.path.basename(rel)), os.path.join(ROOT, "examples", rel), f"examples/{rel}")


def test_the_comparison_catches_what_matters(tmp_path):
    """The comparison is not vacuous: each kind of change a stale model can have is reported, and
    float noise within the tolerance is not."""
    base = load(os.path.join(MODELS, "zipmap.onnx"))
    assert differences(base, load(os.path.join(MODELS, "zipmap.onnx"))) == []

    def changed(edit):
        m = onnx.ModelProto()
        m.CopyFrom(base)
        edit(m)
        return differences(base, m)

    def nudge(m, ulps):
        node = next(n for n in m.graph.node if n.op_type == "LinearClassifier")
        attr = next(a for a in node.attribute if a.name == "coefficients")
        v = np.array(attr.floats, np.float32)
        v[3] = v[3] + np.float32(ulps) * np.spacing(v[3])
        attr.floats[:] = v.tolist()

    assert changed(lambda m: nudge(m, 1)) == []
    assert floats_close(np.array([np.inf], np.float32), np.array([3.4e38], np.float32), "x") != []
    assert floats_close(np.array([np.inf], np.float32), np.array([-np.inf], np.float32), "x") != []
    assert floats_close(np.array([np.nan, np.inf], np.float32), np.array([np.nan, np.inf], np.float32), "x") == []
    assert any("coefficients" in d and "ulps" in d for d in changed(lambda m: nudge(m, 1000))), changed(lambda m: nudge(m, 1000))
    assert any("input[0 'X'].name" in d for d in changed(lambda m: setattr(m.graph.input[0], "name", "Y")))
    assert any("elem_type" in d for d in changed(lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", onnx.TensorProto.DOUBLE)))
    assert any("dim_value" in d for d in changed(lambda m: setattr(m.graph.input[0].type.tensor_type.shape.dim[1], "dim_value", 5)))
    assert any("op_type" in d for d in changed(lambda m: setattr(m.graph.node[-1], "op_type", "Identity")))
    assert any("node: " in d for d in changed(lambda m: m.graph.node.pop()))
    mlp = load(os.path.join(MODELS, "mlp.onnx"))
    other = onnx.ModelProto()
    other.CopyFrom(mlp)
    w = numpy_helper.to_array(other.graph.initializer[0]).copy()
    w[0, 0] += 1e-3
    other.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, other.graph.initializer[0].name))
    assert any("initializer" in d and "ulps" in d for d in differences(mlp, other))
