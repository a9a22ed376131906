"""The optimized-model cache: a second start opens ONNX Runtime's saved optimized graph instead
of optimizing again, answers bit for bit as the ONNX file does, and never uses an entry made for
another CPU, another ONNX Runtime or another version of the model files; a damaged entry or an
unusable cache directory costs a slower start and nothing else."""

import glob
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
import requests

from conftest import BIN, MODELS, Server

CACHED = "optimized model cached for this CPU and ONNX Runtime build"
OPENED = "session opened from the optimized-model cache"


@pytest.fixture(scope="module")
def ort_lib():
    """The library the servers load, named outright: the tests move NIMIFY_CACHE_DIR."""
    return subprocess.run([BIN, "nimify", "ort", "path"], check=True, capture_output=True, text=True).stdout.strip()


def env_for(cache, ort_lib):
    return {**os.environ, "NIMIFY_CACHE_DIR": str(cache), "ORT_DYLIB_PATH": ort_lib}


def messages(server):
    out = []
    for line in server.log:
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def said(server, text):
    return [m for m in messages(server) if m.get("message") == text]


def entries(cache):
    """The entries' headers."""
    return sorted(glob.glob(os.path.join(cache, "models", "*.json")))


def leftovers(cache):
    """Files in the cache that no entry's header names (temporary files, half-made entries)."""
    models = os.path.join(cache, "models")
    if not os.path.isdir(models):
        return []
    named = set()
    for entry in entries(cache):
        named |= {os.path.basename(entry), header(entry)["graph"], header(entry)["data"]}
    return sorted(set(os.listdir(models)) - named)


IMAGE = np.random.default_rng(5).standard_normal((2, 16, 12, 12)).astype(np.float32)


def infer_conv(server, model="conv"):
    body = {"inputs": [{"name": "image", "shape": list(IMAGE.shape), "datatype": "FP32", "data": IMAGE.ravel().tolist()}]}
    r = requests.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=30)
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["shape"] == [2, 32, 12, 12]
    return np.asarray(out["data"], dtype=np.float32)


def serve(model_path, cache, ort_lib, *flags):
    return Server(model_path, *flags, env=env_for(cache, ort_lib))


CONV = os.path.join(MODELS, "conv.onnx")


def cached_conv(cache, ort_lib):
    """A first start that fills `cache`: its answer and the entry's path."""
    first = serve(CONV, cache, ort_lib)
    fresh = infer_conv(first)
    first.stop()
    [entry] = entries(cache)
    return fresh, entry


def remade(cache, ort_lib, fresh, warning):
    """A start that warns `warning`, makes the entry again and answers as `fresh` did."""
    again = serve(CONV, cache, ort_lib)
    warnings = [m["message"] for m in messages(again) if m["level"] == "WARN"]
    assert any(warning in w for w in warnings), "".join(again.log)
    assert said(again, CACHED) and not said(again, OPENED)
    assert infer_conv(again).tobytes() == fresh.tobytes()
    again.stop()


def header(entry):
    with open(entry) as f:
        return json.load(f)


def rewrite_header(entry, change):
    h = header(entry)
    change(h)
    with open(entry, "w") as f:
        json.dump(h, f)


def entry_file(entry, which):
    """The graph or weights file an entry's header names."""
    return os.path.join(os.path.dirname(entry), header(entry)[which])


def test_a_second_start_opens_the_cached_graph_and_answers_bit_for_bit_alike(tmp_path, ort_lib):
    first = serve(CONV, tmp_path, ort_lib)
    fresh = infer_conv(first)
    assert first.stop() == 0
    assert said(first, CACHED) and not said(first, OPENED)
    [entry] = entries(tmp_path)
    assert leftovers(tmp_path) == []
    h = header(entry)
    assert h["nimify_optimized_model"]["optimization"] == "all"
    assert h["nimify_optimized_model"]["files"][0]["path"] == os.path.realpath(CONV)
    assert any(line.startswith("flags: ") or line.startswith("Features: ") for line in h["nimify_optimized_model"]["cpu"])

    # Two instances: both open from the one entry, and both answer.
    second = serve(CONV, tmp_path, ort_lib, "--instances", "2", "--batching", "false")
    assert len(said(second, OPENED)) == 2 and not said(second, CACHED)
    for _ in range(4):
        assert infer_conv(second).tobytes() == fresh.tobytes()
    assert second.stop() == 0
    assert entries(tmp_path) == [entry]

    # Without the cache nothing is read or written, and the answer is the same.
    other = tmp_path / "off"
    off = serve(CONV, other, ort_lib, "--model-cache", "false")
    assert infer_conv(off).tobytes() == fresh.tobytes()
    assert off.stop() == 0
    assert not said(off, OPENED) and not said(off, CACHED)
    assert entries(other) == []


def test_an_entry_made_on_another_cpu_or_runtime_is_never_used(tmp_path, ort_lib):
    fresh, entry = cached_conv(tmp_path, ort_lib)
    here = header(entry)["nimify_optimized_model"]["cpu"]

    # The same entry, as if made on a CPU with one more instruction set and copied here.
    def other_cpu(h):
        cpu = h["nimify_optimized_model"]["cpu"]
        cpu[-1] = cpu[-1] + " avx10_2"

    for change, why in [
        (other_cpu, "cache entry not used: it was made on another CPU (only there: ["),
        (lambda h: h["nimify_optimized_model"].update(onnxruntime="ORT Build Info: another"), "another ONNX Runtime build"),
    ]:
        rewrite_header(entry, change)
        remade(tmp_path, ort_lib, fresh, why)
        # Made again, for this CPU.
        assert header(entry)["nimify_optimized_model"]["cpu"] == here


@pytest.mark.parametrize("damage", ["a changed graph", "a truncated graph", "truncated weights", "no weights", "not a header"])
def test_a_damaged_entry_is_made_again(tmp_path, ort_lib, damage):
    fresh, entry = cached_conv(tmp_path, ort_lib)
    graph, weights = entry_file(entry, "graph"), entry_file(entry, "data")
    if damage == "a changed graph":
        data = bytearray(open(graph, "rb").read())
        data[len(data) // 2] ^= 0x40
        open(graph, "wb").write(data)
    elif damage == "a truncated graph":
        os.truncate(graph, os.path.getsize(graph) - 10)
    elif damage == "truncated weights":
        os.truncate(weights, os.path.getsize(weights) - 4096)
    elif damage == "no weights":
        os.remove(weights)
    else:
        open(entry, "w").write("{")
    remade(tmp_path, ort_lib, fresh, "is broken")
    third = serve(CONV, tmp_path, ort_lib)
    assert said(third, OPENED)
    assert infer_conv(third).tobytes() == fresh.tobytes()
    third.stop()
    # The broken entry's files may stay a while (another start could be saving them); no
    # temporary header does.
    assert [f for f in leftovers(tmp_path) if f.startswith(".")] == []


def test_a_graph_onnx_runtime_refuses_is_replaced(tmp_path, ort_lib):
    """Length and checksum agree with the header, but the graph is no model."""
    import zlib

    fresh, entry = cached_conv(tmp_path, ort_lib)
    junk = bytes(range(256)) * 4
    with open(entry_file(entry, "graph"), "wb") as f:
        f.write(junk)
    rewrite_header(entry, lambda h: h.update(graph_len=len(junk), graph_crc32=zlib.crc32(junk)))
    remade(tmp_path, ort_lib, fresh, "refused the cached optimized model")
    assert header(entry)["graph_len"] != len(junk)


def test_changed_external_weights_never_use_the_old_entry(tmp_path, ort_lib):
    """The key stamps the external-data file too: new weights under the same .onnx are served."""
    models = tmp_path / "m"
    models.mkdir()
    for name in ("external.onnx", "external.weights"):
        shutil.copy(os.path.join(MODELS, name), models / name)
    x = np.arange(16, dtype=np.float32).reshape(2, 8) / 10

    def answer():
        s = serve(str(models / "external.onnx"), tmp_path, ort_lib)
        body = {"inputs": [{"name": "x", "shape": [2, 8], "datatype": "FP32", "data": x.ravel().tolist()}]}
        r = requests.post(f"{s.url}/v2/models/external/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        s.stop()
        return s, np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(2, 8)

    w = np.arange(64, dtype=np.float32).reshape(8, 8)
    first, y = answer()
    assert said(first, CACHED)
    np.testing.assert_allclose(y, x @ w, rtol=1e-6)
    second, y = answer()
    assert said(second, OPENED)
    np.testing.assert_allclose(y, x @ w, rtol=1e-6)
    # Same size, new values, the .onnx untouched.
    (models / "external.weights").write_bytes((w * 2).astype(np.float32).tobytes())
    third, y = answer()
    assert said(third, CACHED) and not said(third, OPENED)
    np.testing.assert_allclose(y, x @ (w * 2), rtol=1e-6)
    # The entry of the old weights is removed when the new one is made.
    assert len(entries(tmp_path)) == 1


def test_an_unusable_cache_directory_costs_only_the_cache(tmp_path, ort_lib):
    # NIMIFY_CACHE_DIR/models cannot be made: NIMIFY_CACHE_DIR is a file.
    blocker = tmp_path / "cache"
    blocker.write_text("")
    s = serve(CONV, blocker, ort_lib)
    assert any(m["level"] == "WARN" and "cannot save the optimized model" in m["message"] for m in messages(s)), "".join(s.log)
    reference = serve(CONV, tmp_path / "off", ort_lib, "--model-cache", "false")
    assert infer_conv(s).tobytes() == infer_conv(reference).tobytes()
    s.stop()
    reference.stop()


def test_a_model_onnx_runtime_refuses_reports_its_own_error_not_the_cache(tmp_path, ort_lib):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("NoSuchOperator", ["x"], ["y"])],
        "refused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "refused.onnx"
    onnx.save(model, str(path))

    def start(*flags):
        r = subprocess.run(
            [*Server.argv_for(str(path)), *flags],
            env={**env_for(tmp_path / "cache", ort_lib), "NIMIFY_GRPC_PORT": "0"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
        return r.stderr.strip().splitlines()[-1]

    with_cache, without = start(), start("--model-cache", "false")
    assert "NoSuchOperator" in with_cache
    assert with_cache == without
    # The cache was tried (its directory made) and nothing of the failed save is left.
    assert os.listdir(tmp_path / "cache" / "models") == []


def test_large_weights_are_mapped_from_the_cache_not_copied(tmp_path, ort_lib):
    """ONNX Runtime maps big initializers from the entry's weights file (page-aligned) instead of
    copying them: the file shows in the server's memory maps, and the answers match those of a
    start without the cache bit for bit."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    # 9.4 MB of weights: well over the size ONNX Runtime maps rather than reads.
    w = (rng.standard_normal((512, 512, 3, 3)) * 0.05).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512, 2, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512, 2, 2])],
        [numpy_helper.from_array(w, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "big.onnx"
    onnx.save(model, str(path))
    x = rng.standard_normal((2, 512, 2, 2)).astype(np.float32)
    body = {"inputs": [{"name": "x", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]}
    cache = tmp_path / "cache"
    answers = []
    for flags in ([], [], ["--model-cache", "false"]):
        s = serve(str(path), cache, ort_lib, *flags)
        r = requests.post(f"{s.url}/v2/models/big/infer", json=body, timeout=30)
        assert r.status_code == 200, r.text
        answers.append(np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32))
        if len(answers) == 2:
            assert said(s, OPENED)
            [entry] = entries(cache)
            maps = open(f"/proc/{s.proc.pid}/maps").read()
            assert os.path.realpath(entry_file(entry, "data")) in maps, "the weights file is not mapped"
        s.stop()
    assert answers[0].tobytes() == answers[1].tobytes() == answers[2].tobytes()
