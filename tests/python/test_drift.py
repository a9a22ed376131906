"""Drift monitoring with real processes: `cargo nimify profile` makes a reference profile from a
sample, `cargo nimify serve --reference` compares what it is sent with it, on /metrics and on
GET /v2/models/{m}/drift.

PSI is checked against an independent numpy computation from the rows actually sent: bucket `i`
of a numeric feature holds `v` with `edges[i-1] <= v < edges[i]` (`np.searchsorted(edges, v,
side="right")`), then one bucket for missing values; every share, reference and window alike, is
raised to at least the profile's `epsilon` (1e-4) before `sum((a - e) * ln(a / e))`."""

import json
import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient

from conftest import BIN, MODELS, ROOT, Container, Server, metrics, sha256_of, skopeo_inspect

TABULAR = os.path.join(MODELS, "tabular.onnx")
MLP = os.path.join(MODELS, "mlp.onnx")
EXAMPLES = os.path.join(ROOT, "examples")


def tabular_sample(n, seed, shift=None, categories=(1, 2, 3), p=(0.5, 0.3, 0.2)):
    """`n` rows like the training data: six standard-normal features and a segment id; `shift`
    maps a feature index to (added mean, scale)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    for i, (mean, scale) in (shift or {}).items():
        x[:, i] = x[:, i] * scale + mean
    segment = rng.choice(categories, size=(n, 1), p=p).astype(np.int64)
    return x, segment


def profile(tmp_path, model, name="sample.npz", *flags, **arrays):
    data = tmp_path / name
    np.savez(data, **arrays)
    out = tmp_path / f"{os.path.basename(model)}.profile.json"
    run = subprocess.run([BIN, "nimify", "profile", "--model", model, "--data", str(data), "--out", str(out), *flags],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == str(out)
    return out, json.loads(out.read_text())


def served_tabular(tmp_path, rows, *flags):
    """The tabular model profiled on `rows` training-like rows, served with that profile and
    `flags`; returns the server, the profile's path and the profile."""
    x, segment = tabular_sample(rows, seed=1)
    path, p = profile(tmp_path, TABULAR, x=x, segment=segment)
    return Server(TABULAR, "--reference", str(path), *flags), path, p


def tensor(name, array):
    datatype = {np.float32: "FP32", np.int64: "INT64"}[array.dtype.type]
    return {"name": name, "shape": list(array.shape), "datatype": datatype, "data": array.flatten().tolist()}


def infer(server, model, batch=100, **arrays):
    """Sends the arrays in requests of `batch` rows with Triton's client (binary tensors, so NaN
    travels too); returns the outputs, concatenated."""
    n = len(next(iter(arrays.values())))
    outputs = {}
    with httpclient.InferenceServerClient(server.address) as client:
        for start in range(0, n, batch):
            inputs = []
            for name, array in arrays.items():
                part = array[start:start + batch]
                datatype = {np.float32: "FP32", np.int64: "INT64", np.object_: "BYTES"}[part.dtype.type]
                i = httpclient.InferInput(name, list(part.shape), datatype)
                i.set_data_from_numpy(part)
                inputs.append(i)
            result = client.infer(model, inputs)
            for o in result.get_response()["outputs"]:
                outputs.setdefault(o["name"], []).append(result.as_numpy(o["name"]))
    return {k: np.concatenate(v) for k, v in outputs.items()}


def drift(server, model):
    r = requests.get(f"{server.url}/v2/models/{model}/drift", timeout=5)
    assert r.status_code == 200, r.text
    return r.json()


def psis(report):
    """{(tensor, feature): psi} from a drift report."""
    return {(t["name"], f["name"]): f["psi"] for t in report["tensors"] for f in t["features"]}


def numpy_psi(feature, values, epsilon):
    """PSI of `values` (one feature's window) against the profiled `feature`, by the documented
    rule, computed without nimify."""
    values = np.asarray(values)
    if feature["type"] == "numeric":
        values = values.astype(np.float64)
        missing = np.isnan(values)
        buckets = np.searchsorted(np.array(feature["edges"]), values[~missing], side="right")
        counts = np.bincount(buckets, minlength=len(feature["edges"]) + 1).astype(np.float64)
    else:
        missing = np.zeros(len(values), bool)
        index = {c: i for i, c in enumerate(feature["categories"])}
        counts = np.zeros(len(feature["categories"]) + 1)
        for v in values:
            counts[index.get(str(int(v)), len(feature["categories"]))] += 1
    actual = np.append(counts, missing.sum()) / len(values)
    expected = np.append(np.array(feature["shares"]), feature["missing"])
    a, e = np.maximum(actual, epsilon), np.maximum(expected, epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def test_the_profile_describes_the_sample_and_the_model(tmp_path):
    x, segment = tabular_sample(4000, seed=1)
    x[::50, 3] = np.nan
    _, p = profile(tmp_path, TABULAR, x=x, segment=segment)
    assert p["schema"] == "nimify.profile/v1" and p["rows"] == 4000 and p["epsilon"] == 1e-4
    assert p["model"] == {"name": "tabular", "sha256": sha256_of(TABULAR)}
    inputs = {t["name"]: t for t in p["inputs"]}
    outputs = {t["name"]: t for t in p["outputs"]}
    assert [f["name"] for f in inputs["x"]["features"]] == ["0", "1", "2", "3", "4", "5"]
    for f in inputs["x"]["features"]:
        # The min, nine deciles and the next number above the max: 12 buckets, the outer two empty.
        assert f["type"] == "numeric" and len(f["edges"]) == 11 and f["shares"][0] == f["shares"][-1] == 0
        assert abs(sum(f["shares"]) + f["missing"] - 1) < 1e-9
        assert f["min"] == pytest.approx(np.nanmin(x[:, int(f["name"])]))
    assert inputs["x"]["features"][3]["missing"] == pytest.approx(80 / 4000)
    seg = inputs["segment"]["features"][0]
    assert seg["type"] == "categorical" and seg["categories"] == ["1", "2", "3"]
    assert seg["shares"][:3] == pytest.approx([np.mean(segment == c) for c in (1, 2, 3)]) and seg["shares"][3] == 0
    assert outputs["label"]["features"][0]["type"] == "categorical"
    assert len(outputs["scores"]["features"]) == 3 and outputs["scores"]["mode"] == {"kind": "columns"}


def test_same_distribution_stays_low_and_two_shifted_features_rise(tmp_path):
    server, _, _ = served_tabular(tmp_path, 5000, "--drift-sample-rate", "1", "--drift-window-rows", "3000")
    try:
        x, segment = tabular_sample(3000, seed=2)
        infer(server, "tabular", x=x, segment=segment)
        values = psis(drift(server, "tabular"))
        for i in range(6):
            assert values[("x", str(i))] < 0.1, values
        assert values[("segment", "0")] < 0.1, values
        # Two features move (mean and spread) and a new segment appears: the window (3000 rows)
        # now holds only these rows.
        x, segment = tabular_sample(3000, seed=3, shift={1: (1.0, 1.5), 4: (-1.2, 1.0)},
                                    categories=(1, 2, 3, 9), p=(0.4, 0.3, 0.2, 0.1))
        infer(server, "tabular", x=x, segment=segment)
        report = drift(server, "tabular")
        values = psis(report)
        assert values[("x", "1")] > 0.2 and values[("x", "4")] > 0.2, values
        for i in (0, 2, 3, 5):
            assert values[("x", str(i))] < 0.1, values
        seg = next(f for t in report["tensors"] if t["name"] == "segment" for f in t["features"])
        assert seg["top_buckets"][0]["bucket"] == "other"
        assert seg["top_buckets"][0]["window_share"] == pytest.approx(np.mean(segment == 9))
        assert seg["top_buckets"][0]["reference_share"] == 0
        # The same numbers on /metrics.
        m = metrics(server)
        key = '{feature="1",model="tabular",tensor="x",version="1"}'
        assert m[("nimify_drift_psi", key)] == pytest.approx(values[("x", "1")])
        assert m[("nimify_drift_window_rows", '{model="tabular",version="1"}')] == 3000
    finally:
        server.stop()


def test_psi_matches_numpy_on_the_rows_sent(tmp_path):
    """Sample rate 1 and a 1000-row window: after 1500 rows, the window is the last 1000, with
    missing and out-of-range values among them, inputs and outputs alike."""
    server, _, p = served_tabular(tmp_path, 3000, "--drift-sample-rate", "1", "--drift-window-rows", "1000")
    try:
        x, segment = tabular_sample(1500, seed=5, shift={2: (0.3, 1.2)}, categories=(1, 2, 3, 4), p=(0.3, 0.3, 0.3, 0.1))
        x[::37, 0] = np.nan
        x[5::101, 5] = 40.0
        out = infer(server, "tabular", batch=50, x=x, segment=segment)
        report = drift(server, "tabular")
        assert report["rows"] == 1000 and report["epsilon"] == 1e-4
        values = psis(report)
        window = {"x": x[-1000:], "segment": segment[-1000:], "label": out["label"][-1000:], "scores": out["scores"][-1000:]}
        for t in p["inputs"] + p["outputs"]:
            columns = window[t["name"]].reshape(1000, -1)
            for f in t["features"]:
                want = numpy_psi(f, columns[:, int(f["name"])], p["epsilon"])
                assert values[(t["name"], f["name"])] == pytest.approx(want, rel=1e-9, abs=1e-12), (t["name"], f["name"])
        m = metrics(server)

        def count(name, tensor_name, feature):
            return m.get((name, f'{{feature="{feature}",model="tabular",tensor="{tensor_name}",version="1"}}'), 0)

        # Counters run over everything sampled, not just the window.
        assert count("nimify_input_missing_total", "x", "0") == np.isnan(x[:, 0]).sum()
        lo, hi = p["inputs"][0]["features"][5]["min"], p["inputs"][0]["features"][5]["max"]
        assert count("nimify_input_out_of_range_total", "x", "5") == ((x[:, 5] < lo) | (x[:, 5] > hi)).sum() > 0
        assert m[("nimify_drift_sampled_rows_total", '{model="tabular",tensor="x",version="1"}')] == 1500
    finally:
        server.stop()


def test_output_class_shares_drift_when_the_label_mix_changes(tmp_path):
    x, segment = tabular_sample(4000, seed=1)
    path, p = profile(tmp_path, TABULAR, x=x, segment=segment)
    label = next(t for t in p["outputs"] if t["name"] == "label")["features"][0]
    server = Server(TABULAR, "--reference", str(path), "--drift-sample-rate", "1")
    try:
        # Rows the model puts in its least common class: the label mix is now all that class.
        x, segment = tabular_sample(6000, seed=7)
        labels = infer(server, "tabular", batch=500, x=x, segment=segment)["label"]
        rare = label["categories"][-1]
        pick = labels.flatten() == int(rare)
        server.stop()
        server = Server(TABULAR, "--reference", str(path), "--drift-sample-rate", "1")
        before = psis(drift(server, "tabular"))
        assert before[("label", "0")] is None
        infer(server, "tabular", x=x[pick][:300], segment=segment[pick][:300])
        report = drift(server, "tabular")
        out = next(f for t in report["tensors"] if t["name"] == "label" for f in t["features"])
        assert out["psi"] > 0.2
        # The rows were picked by the model's answer in other batches: nearly all (ONNX Runtime
        # may round a borderline row the other way in another batch size) are the rare class.
        assert any(b["bucket"] == rare and b["window_share"] > 0.9 for b in out["top_buckets"]), out
    finally:
        server.stop()


def test_sampling_and_a_time_window(tmp_path):
    server, _, _ = served_tabular(tmp_path, 2000, "--drift-sample-rate", "0.25", "--drift-window-seconds", "3")
    try:
        x, segment = tabular_sample(400, seed=2)
        infer(server, "tabular", batch=10, x=x, segment=segment)
        # One request in four, evenly: 10 of 40 requests of 10 rows.
        assert metrics(server)[("nimify_drift_sampled_rows_total", '{model="tabular",tensor="x",version="1"}')] == 100
        assert drift(server, "tabular")["rows"] == 100
        time.sleep(3.5)
        report = drift(server, "tabular")
        assert report["rows"] == 0 and report["window_seconds"] == 3
        assert all(f["psi"] is None for t in report["tensors"] for f in t["features"])
        assert not any(name == "nimify_drift_psi" for name, _ in metrics(server))
    finally:
        server.stop()


def test_image_brightness_moves_the_summary_features(tmp_path):
    model = str(tmp_path / "classifier.onnx")
    shutil.copy(os.path.join(EXAMPLES, "image", "models", "classifier.onnx"), model)
    rng = np.random.default_rng(3)
    pixels = (rng.uniform(size=(600, 3, 32, 32)) * 0.6 + 0.2).astype(np.float32)
    path, p = profile(tmp_path, model, pixels=pixels)
    assert p["inputs"][0]["mode"] == {"kind": "summary"}
    assert [f["name"] for f in p["inputs"][0]["features"]] == ["mean", "std", "l2"]
    server = Server(model, "--reference", str(path), "--drift-sample-rate", "1", "--drift-window-rows", "300")
    try:
        same = (rng.uniform(size=(300, 3, 32, 32)) * 0.6 + 0.2).astype(np.float32)
        infer(server, "classifier", batch=50, pixels=same)
        values = psis(drift(server, "classifier"))
        assert max(values[("pixels", f)] for f in ("mean", "std", "l2")) < 0.1, values
        brighter = np.clip(same + 0.15, 0, 1).astype(np.float32)
        infer(server, "classifier", batch=50, pixels=brighter)
        values = psis(drift(server, "classifier"))
        assert values[("pixels", "mean")] > 0.2 and values[("pixels", "l2")] > 0.2, values
    finally:
        server.stop()


def tokens(rng, n, low, high, unk_share=0.0, seq=16):
    ids = rng.integers(low, high, size=(n, seq)).astype(np.int64)
    ids[rng.uniform(size=ids.shape) < unk_share] = 1
    lengths = rng.integers(5, seq + 1, size=n)
    mask = (np.arange(seq)[None, :] < lengths[:, None]).astype(np.int64)
    return ids * mask, mask


def test_text_vocabulary_shift_moves_the_token_features(tmp_path):
    model = str(tmp_path / "sentiment.onnx")
    shutil.copy(os.path.join(EXAMPLES, "text", "models", "sentiment.onnx"), model)
    rng = np.random.default_rng(4)
    ids, mask = tokens(rng, 1000, 2, 200)
    path, p = profile(tmp_path, model, "sample.npz", "--features", "input_ids=tokens:pad=0:unk=1",
                      input_ids=ids, attention_mask=mask)
    modes = {t["name"]: t["mode"] for t in p["inputs"]}
    assert modes == {"input_ids": {"kind": "tokens", "pad": 0, "unk": 1}, "attention_mask": {"kind": "tokens", "pad": 0}}
    server = Server(model, "--reference", str(path), "--drift-sample-rate", "1", "--drift-window-rows", "400")
    try:
        ids, mask = tokens(rng, 400, 2, 200)
        infer(server, "sentiment", input_ids=ids, attention_mask=mask)
        values = psis(drift(server, "sentiment"))
        assert max(v for (t, _), v in values.items() if t == "input_ids") < 0.1, values
        # Words the vocabulary lacks (unknown) and others from its far end.
        ids, mask = tokens(rng, 400, 200, 372, unk_share=0.3)
        infer(server, "sentiment", input_ids=ids, attention_mask=mask)
        values = psis(drift(server, "sentiment"))
        assert values[("input_ids", "unknown_share")] > 0.2 and values[("input_ids", "mean_id")] > 0.2, values
        assert values[("input_ids", "length")] < 0.1, values
    finally:
        server.stop()


def start_fails(*argv):
    run = subprocess.run([BIN, "nimify", "serve", *argv, "--host", "127.0.0.1", "--port", "0"],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "NIMIFY_GRPC_PORT": "0"})
    assert run.returncode != 0
    return run.stderr


def test_a_profile_for_another_model_refuses_to_start(tmp_path):
    x, segment = tabular_sample(500, seed=1)
    path, p = profile(tmp_path, TABULAR, x=x, segment=segment)
    err = start_fails(MLP, "--reference", str(path))
    assert "reference profile" in err and 'input "x" has 6 feature(s) in the profile but 4 column(s)' in err, err
    assert 'the model has no input "segment"' in err and "cargo nimify profile" in err, err
    # Not a profile, a missing file, a newer schema, an unknown model name.
    err = start_fails(TABULAR, "--reference", os.path.join(MODELS, "not_onnx.onnx"))
    assert "reference profile" in err and "not a JSON profile" in err, err
    err = start_fails(TABULAR, "--reference", str(tmp_path / "nope.json"))
    assert "cannot read it" in err, err
    newer = tmp_path / "v2.json"
    newer.write_text(json.dumps({**p, "schema": "nimify.profile/v2"}))
    assert "schema \"nimify.profile/v2\"" in start_fails(TABULAR, "--reference", str(newer))
    err = start_fails(TABULAR, "--reference", f"other={path}")
    assert 'names model "other"' in err, err
    broken = tmp_path / "broken.json"
    cut = json.loads(json.dumps(p))
    cut["inputs"][0]["features"][0]["shares"] = [0.5]
    broken.write_text(json.dumps(cut))
    assert "1 share(s) for 12 bucket(s)" in start_fails(TABULAR, "--reference", str(broken))
    # Two features of one name would share their series.
    twice = json.loads(json.dumps(p))
    twice["inputs"][0]["features"][1]["name"] = "0"
    broken.write_text(json.dumps(twice))
    assert 'has the features ["0", "1", "2", "3", "4", "5"], not ["0", "0"' in start_fails(TABULAR, "--reference", str(broken))
    # The same category twice, under two spellings.
    again = json.loads(json.dumps(p))
    again["inputs"][1]["features"][0]["categories"][1] = "01"
    broken.write_text(json.dumps(again))
    assert 'category "01" is listed twice' in start_fails(TABULAR, "--reference", str(broken))
    # A float column described as categories.
    kind = json.loads(json.dumps(p))
    kind["inputs"][0]["features"][0] = {"name": "0", "missing": 0, "type": "categorical", "categories": ["1"], "shares": [0.5, 0.5]}
    broken.write_text(json.dumps(kind))
    assert "FP32 values cannot be categorical" in start_fails(TABULAR, "--reference", str(broken))


def test_another_model_file_with_the_same_signature_warns(tmp_path):
    x, segment = tabular_sample(500, seed=1)
    path, p = profile(tmp_path, TABULAR, x=x, segment=segment)
    p["model"]["sha256"] = "0" * 64
    path.write_text(json.dumps(p))
    server = Server(TABULAR, "--reference", f"tabular={path}")
    try:
        assert any("made with another model file" in line for line in server.log), server.log
        assert drift(server, "tabular")["sample_rate"] == 0.1
    finally:
        server.stop()


def test_no_reference_no_drift(serve):
    server = serve("mlp")
    r = requests.get(f"{server.url}/v2/models/mlp/drift", timeout=5)
    assert r.status_code == 404 and "no reference profile" in r.json()["error"]
    assert requests.get(f"{server.url}/v2/models/nope/drift", timeout=5).status_code == 404
    doc = requests.get(f"{server.url}/openapi.json", timeout=5).json()
    assert "/v2/models/{model}/drift" in doc["paths"]
    assert not any(name.startswith("nimify_drift_psi") for name, _ in metrics(server))


def test_csv_and_request_files_give_the_same_profile_as_npz(tmp_path):
    rng = np.random.default_rng(9)
    x = rng.normal(size=(300, 4)).astype(np.float32)
    x[7, 2] = np.nan
    _, from_npz = profile(tmp_path, MLP, x=x)
    csv = tmp_path / "sample.csv"
    lines = ["a,b,c,d"] + [",".join("" if np.isnan(v) else repr(float(v)) for v in row) for row in x]
    csv.write_text("\n".join(lines) + "\n")
    requests_dir = tmp_path / "requests"
    requests_dir.mkdir()
    for i in range(0, 300, 100):
        (requests_dir / f"{i:04}.json").write_text(json.dumps({"inputs": [tensor("x", np.nan_to_num(x[i:i + 100], nan=0.0))]}))
    for data in (csv, requests_dir):
        out = tmp_path / "other.json"
        run = subprocess.run([BIN, "nimify", "profile", "--model", MLP, "--data", str(data), "--out", str(out)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        got = json.loads(out.read_text())
        if data == csv:
            assert got["inputs"] == from_npz["inputs"]
        else:
            # The JSON requests carry 0 where the array has NaN: only that column differs.
            assert got["rows"] == 300 and got["inputs"][0]["features"][2]["missing"] == 0
            assert [f for i, f in enumerate(got["inputs"][0]["features"]) if i != 2] == \
                [f for i, f in enumerate(from_npz["inputs"][0]["features"]) if i != 2]


def test_profile_errors_are_clear_and_write_nothing(tmp_path):
    out = tmp_path / "p.json"

    def fails(*args, out=out):
        before = sorted(os.listdir(tmp_path))
        run = subprocess.run([BIN, "nimify", "profile", "--model", TABULAR, "--out", str(out), *args],
                             capture_output=True, text=True)
        assert run.returncode != 0 and not out.exists() and sorted(os.listdir(tmp_path)) == before, run.stderr
        return run.stderr

    x, segment = tabular_sample(100, seed=1)
    np.savez(tmp_path / "no_segment.npz", x=x)
    assert 'no array for input "segment"' in fails("--data", str(tmp_path / "no_segment.npz"))
    np.savez(tmp_path / "extra.npz", x=x, segment=segment, y=x)
    assert 'array "y", which is not an input' in fails("--data", str(tmp_path / "extra.npz"))
    np.savez(tmp_path / "rows.npz", x=x, segment=segment[:50])
    assert "different row counts" in fails("--data", str(tmp_path / "rows.npz"))
    np.savez(tmp_path / "strings.npz", x=x.astype(str), segment=segment)
    assert "holds BYTES values and the model takes FP32" in fails("--data", str(tmp_path / "strings.npz"))
    np.savez(tmp_path / "objects.npz", x=np.array([object()] * 3, dtype=object), segment=segment)
    assert "object arrays" in fails("--data", str(tmp_path / "objects.npz"))
    (tmp_path / "zip.npz").write_bytes(b"not a zip")
    assert "not an .npz" in fails("--data", str(tmp_path / "zip.npz"))
    (tmp_path / "two.csv").write_text("1,2\n")
    assert "a .csv sample feeds a model with one input" in fails("--data", str(tmp_path / "two.csv"))
    np.savez(tmp_path / "ok.npz", x=x, segment=segment)
    assert "does not have" in fails("--data", str(tmp_path / "ok.npz"), "--features", "pixels=summary")
    assert "unknown feature mode" in fails("--data", str(tmp_path / "ok.npz"), "--features", "x=histogram")
    assert "only `tokens` takes options" in fails("--data", str(tmp_path / "ok.npz"), "--features", "x=summary:pad=1")
    assert "cannot open" in fails("--data", str(tmp_path / "missing.npz"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.json request files" in fails("--data", str(empty))
    (empty / "bad.json").write_text("{")
    assert "bad.json" in fails("--data", str(empty))
    # A profile that cannot be written (its directory is missing) leaves nothing behind.
    assert "cannot write" in fails("--data", str(tmp_path / "ok.npz"), out=tmp_path / "no" / "p.json")
    assert "must be between 1 and 999" in fails("--data", str(tmp_path / "ok.npz"), "--max-categories", "100000")
    assert "`tokens` needs integer token ids" in fails("--data", str(tmp_path / "ok.npz"), "--features", "x=tokens")


def test_strings_and_booleans_are_categories(tmp_path):
    """BYTES input and outputs, a BOOL output: categories; an unseen word lands in "other", an
    empty string is missing."""
    strings = os.path.join(MODELS, "strings.onnx")
    rng = np.random.default_rng(6)
    words = rng.choice(["cat", "dog", "bird", "Owl"], size=400, p=[0.4, 0.3, 0.2, 0.1])
    path, p = profile(tmp_path, strings, text=words)
    text = p["inputs"][0]["features"][0]
    assert p["inputs"][0]["datatype"] == "BYTES" and text["type"] == "categorical"
    assert text["categories"] == ["cat", "dog", "bird", "Owl"]
    is_word = next(t for t in p["outputs"] if t["name"] == "is_word")["features"][0]
    assert is_word["categories"] == ["1", "0"] and is_word["shares"][1] == pytest.approx(np.mean(words == "Owl"))
    server = Server(strings, "--reference", str(path), "--drift-sample-rate", "1")
    try:
        sent = np.array(["cat", "fish", "", "dog"] * 25, dtype=object)
        infer(server, "strings", text=sent)
        report = drift(server, "strings")
        feature = next(f for t in report["tensors"] if t["name"] == "text" for f in t["features"])
        shares = {b["bucket"]: b["window_share"] for b in feature["top_buckets"]}
        assert shares["other"] == 0.25 and shares["missing"] == 0.25, feature
        assert feature["missing"] == 25 and feature["psi"] > 0.2
        assert feature["psi"] == pytest.approx(numpy_strings_psi(text, list(sent), p["epsilon"]))
    finally:
        server.stop()


def numpy_strings_psi(feature, values, epsilon):
    index = {c: i for i, c in enumerate(feature["categories"])}
    counts = np.zeros(len(feature["categories"]) + 2)
    for v in values:
        counts[len(counts) - 1 if v == "" else index.get(v, len(feature["categories"]))] += 1
    a = np.maximum(counts / len(values), epsilon)
    e = np.maximum(np.append(feature["shares"], feature["missing"]), epsilon)
    return float(np.sum((a - e) * np.log(a / e)))


def test_requests_without_rows_or_with_lying_shapes_change_nothing(tmp_path):
    model = str(tmp_path / "sentiment.onnx")
    shutil.copy(os.path.join(EXAMPLES, "text", "models", "sentiment.onnx"), model)
    rng = np.random.default_rng(8)
    ids, mask = tokens(rng, 200, 2, 200)
    path, _ = profile(tmp_path, model, input_ids=ids, attention_mask=mask)
    server = Server(model, "--reference", str(path), "--drift-sample-rate", "1")
    try:
        for shape in ([0, 16], [0, 2 ** 62]):
            body = {"inputs": [{"name": n, "shape": shape, "datatype": "INT64", "data": []} for n in ("input_ids", "attention_mask")]}
            r = requests.post(f"{server.url}/v2/models/sentiment/infer", json=body, timeout=10)
            assert r.status_code in (200, 400, 422, 500), r.text
        assert requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200
        assert drift(server, "sentiment")["rows"] == 0
        assert server.proc.poll() is None
    finally:
        server.stop()


def test_a_zero_code_image_ships_the_profile(tmp_path):
    """`cargo nimify image --model x.onnx --reference x.profile.json`: the profile is an asset of
    the image and the server in it measures drift against it; a profile for another model is
    refused before anything is built."""
    shutil.copy(TABULAR, tmp_path / "tabular.onnx")
    shutil.copy(os.path.join(MODELS, "tabular.profile.json"), tmp_path / "tabular.profile.json")
    r = subprocess.run([BIN, "nimify", "image", "--model", str(tmp_path / "mlp.onnx"), "--reference", "tabular.profile.json"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "not found" in r.stderr, r.stderr
    shutil.copy(MLP, tmp_path / "mlp.onnx")
    r = subprocess.run([BIN, "nimify", "image", "--model", "mlp.onnx", "--reference", "tabular.profile.json"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode != 0 and "does not fit" in r.stderr and "cargo nimify profile" in r.stderr, r.stderr
    assert not (tmp_path / "target" / "nimify" / "mlp").exists()
    r = subprocess.run([BIN, "nimify", "image", "--model", "tabular.onnx", "--reference", "tabular.profile.json", "--format", "json"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    config = skopeo_inspect(result["reference"], config=True)["config"]
    assert "NIMIFY_REFERENCE=/opt/nimify/assets/nimify/reference.profile.json" in config["Env"]
    container = Container(result["reference"], env={"NIMIFY_DRIFT_SAMPLE_RATE": "1"})
    try:
        x, segment = tabular_sample(200, seed=2)

        class At:
            address = container.url.removeprefix("http://")
            url = container.url

        infer(At, "tabular", x=x, segment=segment)
        report = drift(At, "tabular")
        assert report["rows"] == 200 and report["reference"] == "/opt/nimify/assets/nimify/reference.profile.json"
    finally:
        container.remove()
