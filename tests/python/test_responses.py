"""Large answers: the output cap and the memory a large response costs, read from the server's
peak resident set (/proc/PID/status VmHWM). tests/models/big_output.onnx answers `y: float[n]`
for the `n` a request names, so an 80-byte request can ask for any size of answer."""

import json

import numpy as np
import requests

ELEMENT = np.float32(1.2345678e-7)


def ask(n, binary=False, outputs=("y",)):
    body = {"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]}]}
    body["outputs"] = [{"name": o, "parameters": {"binary_data": binary}} for o in outputs]
    return body


def peak_rss_mib(server):
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def test_an_output_above_the_cap_is_refused_before_it_is_copied(start):
    """1e8 FP32 elements (400 MB) against a 64 MB cap: a 422 naming the limit, and the process's
    peak grows by ONNX Runtime's own output buffer only (no copy of it is made)."""
    server = start("big_output", "--max-output-bytes", "64000000", "--batching", "false")
    before = peak_rss_mib(server)
    r = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(100_000_000), timeout=120)
    grew = peak_rss_mib(server) - before
    assert r.status_code == 422, r.text[:300]
    error = r.json()["error"]
    assert "400000000 bytes" in error and "64000000 byte limit (max_output_bytes)" in error, error
    assert grew < 400 * 1.3, f"peak RSS grew by {grew:.0f} MiB for a 400 MB output refused by the cap"
    # Under the cap it is served, and the server is still fine.
    ok = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(1000), timeout=10)
    assert ok.status_code == 200 and ok.json()["outputs"][0]["shape"] == [1000]


def test_the_cap_counts_only_the_outputs_asked_for(start):
    """y (4 bytes an element) and n_out (8 bytes): the cap is on what the request asks for."""
    server = start("big_output", "--max-output-bytes", "4000")
    assert requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(998), timeout=10).status_code == 200
    r = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(1001), timeout=10)
    assert r.status_code == 422 and "4004 bytes" in r.json()["error"], r.text[:300]
    # 999 x 4 + 8 bytes: over the cap only with n_out.
    assert requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(999), timeout=10).status_code == 200
    both = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(999, outputs=("y", "n_out")), timeout=10)
    assert both.status_code == 422 and "take 4004 bytes" in both.json()["error"], both.text[:300]
    small = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(100_000, outputs=("n_out",)), timeout=10)
    assert small.status_code == 200 and small.json()["outputs"] == [{"name": "n_out", "datatype": "INT64", "shape": [1], "data": [100_000]}], small.text


def test_a_large_binary_answer_holds_one_copy(start):
    """100 MB of binary output: ONNX Runtime's buffer and one copy, never the two or three more
    that building the body by appending would take; the bytes are right."""
    server = start("big_output", "--max-output-bytes", "0", "--batching", "false")
    n = 25_000_000
    before = peak_rss_mib(server)
    r = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(n, binary=True), timeout=120)
    grew = peak_rss_mib(server) - before
    assert r.status_code == 200, r.text[:300]
    header_len = int(r.headers["Inference-Header-Content-Length"])
    header = json.loads(r.content[:header_len])
    assert header["outputs"][0]["parameters"]["binary_data_size"] == 4 * n
    data = np.frombuffer(r.content[header_len:], dtype="<f4")
    assert data.shape == (n,) and (data == ELEMENT).all()
    size = 4 * n / 2**20
    assert grew < 2.3 * size, f"peak RSS grew by {grew:.0f} MiB for a {size:.0f} MiB binary output"


def test_a_large_json_answer_is_written_as_it_is_sent(start):
    """20 MB of FP32 as JSON is 65 MB of text: it goes out in pieces (chunked), so the peak holds
    the tensor (and ONNX Runtime's buffer for a moment), not the text; the text parses back."""
    server = start("big_output", "--max-output-bytes", "0", "--batching", "false")
    n = 5_000_000
    before = peak_rss_mib(server)
    r = requests.post(f"{server.url}/v2/models/big_output/infer", json=ask(n), timeout=120, stream=True)
    assert r.status_code == 200
    assert r.headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in r.headers
    text = r.raw.read(decode_content=True)
    grew = peak_rss_mib(server) - before
    answer = json.loads(text)
    [y] = answer["outputs"]
    assert y["shape"] == [n] and len(y["data"]) == n
    assert np.all(np.asarray(y["data"], dtype=np.float32) == ELEMENT)
    assert answer["model_name"] == "big_output" and answer["model_version"] == "1"
    size = 4 * n / 2**20
    assert grew < 2.5 * size, f"peak RSS grew by {grew:.0f} MiB for {size:.0f} MiB of output sent as {len(text) / 2**20:.0f} MiB of JSON"


def test_streamed_and_whole_json_answers_are_the_same_text(start):
    """Just below and just above the size where JSON is streamed, with an id echoed: the same
    document either way."""
    server = start("big_output", "--max-output-bytes", "0")
    texts = []
    for n, streamed in ((262_000, False), (263_000, True)):  # 1 MiB of FP32 is 262 144 elements
        body = {**ask(n, outputs=("y", "n_out")), "id": 'req "1" "data":[]'}
        r = requests.post(f"{server.url}/v2/models/big_output/infer", json=body, timeout=60)
        assert r.status_code == 200
        assert ("Content-Length" not in r.headers) == streamed and (r.headers.get("Transfer-Encoding") == "chunked") == streamed, r.headers
        texts.append(r.text.replace(str(n), "N").replace("1.2345679e-7,", ""))
        answer = r.json()
        assert answer["outputs"][1] == {"name": "n_out", "datatype": "INT64", "shape": [1], "data": [n]}
        assert answer["id"] == 'req "1" "data":[]'
        assert answer["outputs"][0]["shape"] == [n] and len(answer["outputs"][0]["data"]) == n
        assert r.text.startswith('{"model_name":"big_output","model_version":"1","id":')
    # The same document, byte for byte, once the sizes are taken out.
    assert texts[0] == texts[1], (texts[0][:300], texts[1][:300])
