"""The committed test models are exactly what tests/models/make_models.py generates (run
`cargo xtask models` after changing the script)."""

import filecmp
import os
import subprocess
import sys

from conftest import MODELS, ROOT


def test_committed_models_are_fresh(tmp_path):
    subprocess.run([sys.executable, os.path.join(MODELS, "make_models.py"), str(tmp_path)], check=True, capture_output=True)
    generated = sorted(os.listdir(tmp_path))
    assert "mlp.onnx" in generated
    for name in generated:
        assert filecmp.cmp(tmp_path / name, os.path.join(MODELS, name), shallow=False), f"tests/models/{name} is stale: run `cargo xtask models`"
    assert filecmp.cmp(tmp_path / "zipmap.onnx", os.path.join(ROOT, "examples", "iris", "iris.onnx"), shallow=False)


def test_committed_example_models_are_fresh(tmp_path):
    subprocess.run([sys.executable, os.path.join(ROOT, "examples", "make_models.py"), str(tmp_path)], check=True, capture_output=True)
    for rel in ("pipeline/models/scaler.onnx", "pipeline/models/scorer.onnx", "recurrent/models/gru.onnx", "image/models/classifier.onnx",
                "text/models/sentiment.onnx"):
        assert filecmp.cmp(tmp_path / os.path.basename(rel), os.path.join(ROOT, "examples", rel), shallow=False), f"examples/{rel} is stale: run `cargo xtask models`"
