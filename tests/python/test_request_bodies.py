"""Request bodies as clients really send them: compressed (gzip, deflate, zstd), compressed to
explode, in codings the server does not know, and large bodies still on their way when the
answer is already known (unknown model, missing API key, over the limit)."""

import gzip
import json
import socket
import struct
import zlib

import numpy as np
import pytest
import requests
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def zstd_frame(blocks):
    """A zstd frame (RFC 8878) from (kind, payload) blocks: ("raw", bytes) or ("rle", (byte,
    count)); no checksum, no content size."""
    out = struct.pack("<I", 0xFD2FB528) + bytes([0x00, 0x58])  # descriptor 0; window 2^(10+11)
    for i, (kind, payload) in enumerate(blocks):
        last = int(i == len(blocks) - 1)
        if kind == "raw":
            header = last | (0 << 1) | (len(payload) << 3)
            out += header.to_bytes(3, "little") + payload
        else:
            byte, count = payload
            header = last | (1 << 1) | (count << 3)
            out += header.to_bytes(3, "little") + bytes([byte])
    return out


def zstd_raw(data):
    return zstd_frame([("raw", data[i:i + 100_000]) for i in range(0, len(data), 100_000)] or [("raw", b"")])


def gzip_of_zeros(size):
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = bytes(1 << 20)
    return b"".join(c.compress(chunk) for _ in range(size >> 20)) + c.flush()


def peak_rss_kib(server):
    with open(f"/proc/{server.proc.pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


@pytest.mark.parametrize("coding, encode", [("gzip", gzip.compress), ("x-gzip", gzip.compress), ("deflate", zlib.compress), ("zstd", zstd_raw), ("GZip", gzip.compress)])
def test_compressed_bodies_give_the_same_answer(serve, coding, encode):
    server = serve("mlp")
    plain = requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=5)
    body = encode(json.dumps(GOOD).encode())
    r = requests.post(f"{server.url}/v2/models/mlp/infer", data=body, headers={"Content-Encoding": coding, "Content-Type": "application/json"}, timeout=5)
    assert r.status_code == 200, r.text
    assert r.json() == plain.json()


def test_compressed_binary_tensors_from_tritonclient(serve):
    """tritonclient's own request compression (gzip and deflate) over the binary extension."""
    server = serve("mlp")
    client = httpclient.InferenceServerClient(server.address)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    expected = None
    for algorithm in (None, "gzip", "deflate"):
        tensor = httpclient.InferInput("x", [1, 4], "FP32")
        tensor.set_data_from_numpy(x, binary_data=True)
        result = client.infer("mlp", [tensor], request_compression_algorithm=algorithm).as_numpy("probs")
        expected = result if expected is None else expected
        np.testing.assert_array_equal(result, expected)


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_a_compression_bomb_is_413_with_bounded_memory(start, coding):
    """1 GiB of zeros in about 1 MB (gzip) or 100 KB (zstd RLE blocks): refused at the decoded
    limit, and the process's peak memory grows by far less than the decoded size."""
    server = start("mlp", "--max-body-bytes", "1000000")
    bomb = gzip_of_zeros(1 << 30) if coding == "gzip" else zstd_frame([("rle", (0, 1 << 17))] * 8192)
    before = peak_rss_kib(server)
    r = requests.post(f"{server.url}/v2/models/mlp/infer", data=bomb, headers={"Content-Encoding": coding}, timeout=60)
    grew_mib = (peak_rss_kib(server) - before) / 1024
    assert r.status_code == 413, r.text
    assert "1000000 byte limit" in r.json()["error"] and "decoded" in r.json()["error"]
    assert grew_mib < 64, f"peak RSS grew by {grew_mib:.0f} MiB decoding a {len(bomb)} byte {coding} bomb"
    assert requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=5).status_code == 200


@pytest.mark.parametrize("coding, says", [("br", '"br" is not supported'), ("compress", '"compress" is not supported'), ("gzip, zstd", "send at most one")])
def test_unknown_or_stacked_codings_are_415(serve, coding, says):
    r = requests.post(f"{serve('mlp').url}/v2/models/mlp/infer", data=b"x", headers={"Content-Encoding": coding}, timeout=5)
    assert r.status_code == 415 and says in r.json()["error"], r.text
    assert r.headers["accept-encoding"] == "gzip, deflate, zstd"


@pytest.mark.parametrize("coding, body", [("gzip", b"not gzip at all"), ("deflate", b"\x00\x01\x02"), ("zstd", b"\x28\xb5\x2f\xfd\xff"), ("gzip", gzip.compress(b"x" * 1000, mtime=0)[:-20])])
def test_corrupt_compressed_bodies_are_400(serve, coding, body):
    server = serve("mlp")
    r = requests.post(f"{server.url}/v2/models/mlp/infer", data=body, headers={"Content-Encoding": coding}, timeout=5)
    assert r.status_code == 400 and "cannot read request body" in r.json()["error"], r.text
    assert requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=5).status_code == 200


def send_then_read(address, head, body):
    """Writes the whole request before reading anything, as simple clients do; the answer's
    status line and JSON body, or the socket error the client met."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        try:
            s.sendall(head + body)
            answer = b""
            while chunk := s.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer:
                    top, _, rest = answer.partition(b"\r\n\r\n")
                    length = int(next(l.split(b":")[1] for l in top.split(b"\r\n") if l.lower().startswith(b"content-length")))
                    if len(rest) >= length:
                        return int(top.split()[1]), json.loads(rest[:length])
        except OSError as e:
            return type(e).__name__, None
    return "closed without an answer", None


def test_an_early_404_reaches_a_client_still_sending_4_mb(serve):
    server = serve("mlp")
    body = bytes(4 << 20)
    head = f"POST /v2/models/mlpx/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nInference-Header-Content-Length: 2\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    status, answer = send_then_read(server.address, head, body)
    assert status == 404 and "unknown model" in answer["error"], (status, answer)
    # tritonclient with a 4 MB binary tensor and a mistyped model name.
    client = httpclient.InferenceServerClient(server.address)
    tensor = httpclient.InferInput("x", [1 << 18, 4], "FP32")
    tensor.set_data_from_numpy(np.zeros((1 << 18, 4), dtype=np.float32), binary_data=True)
    with pytest.raises(InferenceServerException) as e:
        client.infer("mlpx", [tensor])
    assert e.value.status() == "404" and "unknown model" in e.value.message(), e.value


def test_early_401_and_413_reach_clients_still_sending(start, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("k1\n")
    server = start("mlp", "--api-keys-file", str(keys), "--max-body-bytes", "1000000")
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.5] * 4}], "pad": "y" * (3 << 20)}).encode()
    head = f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    status, answer = send_then_read(server.address, head, body)
    assert status == 401, (status, answer)
    authed = head.replace(b"Host: x\r\n", b"Host: x\r\nAuthorization: Bearer k1\r\n")
    status, answer = send_then_read(server.address, authed, body)
    assert status == 413 and "byte limit" in answer["error"], (status, answer)
