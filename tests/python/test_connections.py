"""Connections as a hostile client opens them: idle, half-sent headers, slow bodies, hundreds at
once under a small file-descriptor limit, requests hyper cannot parse, and SIGTERM under load.

Timeouts here are the server's own settings, chosen by each test; bounds on waits are generous
multiples of them, never a measure of the CPU's speed.
"""

import json
import os
import re
import resource
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import BIN, MODELS, Service, metrics

GOOD = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


def raw(address, data, timeout=10):
    """Sends `data` on a fresh socket and returns everything read until the server closes."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def split(answer):
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def closed_by_server(sock, within):
    """True when the server closes `sock` (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False


def closed_counts(server):
    m = metrics(server)
    return {reason: m.get(("nimify_connections_closed_total", f'{{reason="{reason}"}}'), 0) for reason in ("header_timeout", "idle_timeout", "write_stalled", "shed")}


def serve_mlp(*flags, prefix=()):
    return Service([*prefix, BIN, "nimify", "serve", os.path.join(MODELS, "mlp.onnx"), "--host", "127.0.0.1", "--port", "0", *flags])


@pytest.mark.parametrize("cap", ["auto", "above the fd limit"])
def test_stalled_clients_cannot_starve_a_good_one_under_256_fds(cap):
    """400 stalled sockets against a process allowed 256 file descriptors: with the automatic cap
    (the fd limit less 64) the server sheds the longest waiting; with a cap above the fd limit,
    accept fails with EMFILE, backs off and sheds. Either way a new client is answered well
    within the header timeout plus a second or two, and the stalled sockets are closed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(1024, hard), hard))
    header_timeout = 3.0
    flags = ["--header-read-timeout-ms", str(int(header_timeout * 1000)), "--request-timeout-ms", "4000", "--batching", "false"]
    if cap != "auto":
        flags += ["--max-connections", "100000"]
    server = serve_mlp(*flags, prefix=("prlimit", "--nofile=256:256"))
    host, port = server.address.rsplit(":", 1)
    stalled = []
    try:
        for i in range(400):
            s = socket.create_connection((host, int(port)), timeout=10)
            if i % 4 == 1:  # half-sent header section
                s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Le")
            elif i % 4 == 2:  # a body that never finishes
                s.sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n{\"inputs\"")
            stalled.append(s)
        started = time.monotonic()
        r = requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=30)
        took = time.monotonic() - started
        assert r.status_code == 200, r.text
        assert took < header_timeout + 2, f"a good client waited {took:.1f} s behind 400 stalled sockets (header timeout {header_timeout} s)"
        # Every stalled socket ends: idle and half-sent ones by the header timeout or shedding,
        # slow bodies by the request deadline (4 s).
        still_open = [s for s in stalled if not closed_by_server(s, 0.05)]
        deadline = time.monotonic() + header_timeout + 4 + 5
        while still_open and time.monotonic() < deadline:
            still_open = [s for s in still_open if not closed_by_server(s, 0.05)]
        assert not still_open, f"{len(still_open)} of 400 stalled sockets still open"
        counts = closed_counts(server)
        assert counts["header_timeout"] + counts["shed"] > 0, counts
        accept_errors = metrics(server)[("nimify_accept_errors_total", "")]
        if cap == "auto":
            assert counts["shed"] > 0 and accept_errors == 0, (counts, accept_errors)
        else:
            assert accept_errors > 0, "the cap above the fd limit should have met EMFILE"
        assert requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=10).status_code == 200
        assert server.proc.poll() is None
    finally:
        for s in stalled:
            s.close()
        server.stop()


def test_idle_and_half_sent_connections_are_closed_at_their_own_timeouts():
    server = serve_mlp("--header-read-timeout-ms", "1000", "--idle-timeout-ms", "3000")
    host, port = server.address.rsplit(":", 1)
    try:
        before = closed_counts(server)
        silent = socket.create_connection((host, int(port)))
        half = socket.create_connection((host, int(port)))
        half.sendall(b"GET /v2 HTTP/1.1\r\nHo")
        kept = socket.create_connection((host, int(port)))
        kept.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
        kept.settimeout(5)
        assert kept.recv(65536).startswith(b"HTTP/1.1 200")
        opened = time.monotonic()
        assert closed_by_server(silent, 5) and closed_by_server(half, 5)
        assert time.monotonic() - opened < 2.5
        # The kept-alive one is idle, so it has the longer idle timeout.
        assert closed_by_server(kept, 10)
        assert time.monotonic() - opened >= 2.5, "an idle kept-alive connection was closed at the header timeout"
        after = closed_counts(server)
        assert after["header_timeout"] - before["header_timeout"] == 2, after
        assert after["idle_timeout"] - before["idle_timeout"] == 1, after
        # A client that uses its connection more often than the idle timeout keeps it: three
        # requests on one socket, 1.2 s apart.
        with socket.create_connection((host, int(port)), timeout=5) as reused:
            for _ in range(3):
                reused.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                assert reused.recv(65536).startswith(b"HTTP/1.1 200"), "the kept-alive connection was closed"
                time.sleep(1.2)
        assert closed_counts(server)["idle_timeout"] == after["idle_timeout"]
    finally:
        server.stop()


def test_a_header_begun_after_an_idle_spell_gets_the_header_timeout():
    """The connection's timer is set for an idle connection's earliest header deadline and moved
    only when a deadline comes earlier: a kept-alive connection that idles for half the header
    timeout, or for one and a half, and then sends half a header is closed one header timeout
    after that first byte, long before its idle timeout."""
    server = serve_mlp("--header-read-timeout-ms", "1000", "--idle-timeout-ms", "8000")
    host, port = server.address.rsplit(":", 1)
    try:
        def after_idling(seconds):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
            time.sleep(seconds)
            sock.sendall(b"GET /v2 HTTP/1.1\r\nHo")
            began = time.monotonic()
            assert closed_by_server(sock, 10)
            return time.monotonic() - began

        with ThreadPoolExecutor(2) as pool:
            took = list(pool.map(after_idling, [0.5, 1.5]))
        assert all(0.8 <= t < 4.0 for t in took), took
        assert closed_counts(server)["header_timeout"] == 2
    finally:
        server.stop()


def test_the_http2_preface_is_told_apart_even_when_it_comes_in_pieces():
    """An HTTP/2 client is idle from its preface on (a gRPC channel opens before its first
    call), so only its idle timeout applies; an HTTP/1 one that has begun sending has the header
    timeout. The preface may come in pieces, and a client that sends part of it and stops, or
    that goes on with other bytes, is HTTP/1: half a preface cannot hold a connection open."""
    server = serve_mlp("--header-read-timeout-ms", "1000", "--idle-timeout-ms", "8000")
    host, port = server.address.rsplit(":", 1)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    try:
        before = closed_counts(server)
        pieces = socket.create_connection((host, int(port)))
        for piece in (preface[:3], preface[3:10], preface[10:] + empty_settings):
            pieces.sendall(piece)
            time.sleep(0.3)
        partial = socket.create_connection((host, int(port)))
        partial.sendall(preface[:16])
        opened = time.monotonic()
        # Bytes that part from the preface are read as HTTP/1, which this request line is not.
        status, _, body = split(raw(server.address, preface[:14] + b"\r\nHost: x\r\n\r\n"))
        assert status == 400 and b"not valid HTTP/1.1" in body, body
        assert closed_by_server(partial, 5)
        assert time.monotonic() - opened < 4.0
        # Past twice the header timeout, the HTTP/2 one is still open: its answer is the
        # server's own SETTINGS frame, and nothing closes it.
        assert not closed_by_server(pieces, 2.5), "an HTTP/2 connection whose preface came in pieces got the header timeout"
        after = closed_counts(server)
        assert after["header_timeout"] - before["header_timeout"] == 1, after
        pieces.close()
    finally:
        server.stop()


@pytest.mark.parametrize(
    "request_bytes, status, says",
    [
        (b"BREW /pot HTCPCP/1.0\r\n\r\n", 400, "not valid HTTP/1.1"),
        (b"GET / HTTP/1.1\r\nBad Header Line\r\n\r\n", 400, "not valid HTTP/1.1"),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "URI is longer"),
        (b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(150)) + b"\r\n", 431, "header section"),
        # hyper's 400 KiB limit is checked between reads, and one read fills all the room its
        # buffer has (which grows by doubling), so a section just past the limit may be read
        # whole and accepted; 1 MB is more than the reads can bring in before the check.
        (b"GET / HTTP/1.1\r\nX-Big: " + b"y" * 1_000_000 + b"\r\n\r\n", 431, "header section"),
        (b"DELETE /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n\r\n", 405, "DELETE is not allowed"),
    ],
    ids=["garbage", "bad-header", "414", "431-count", "431-size", "405"],
)
def test_requests_hyper_cannot_parse_get_json_errors(serve, request_bytes, status, says):
    answer = raw(serve("mlp").address, request_bytes.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1))
    got, headers, body = split(answer)
    assert got == status, answer[:300]
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    assert says in json.loads(body)["error"], body


def test_error_answers_of_layers_and_extractors_are_json(serve):
    """Errors not built by our handlers (a path parameter the extractor refuses) are JSON too."""
    r = requests.get(f"{serve('mlp').url}/v2/models/%FF/ready", timeout=5)
    assert r.status_code >= 400
    assert r.headers["content-type"] == "application/json" and r.json()["error"], r.text


def test_sigterm_under_load_keeps_serving_through_the_delay():
    """A steady load across SIGTERM: readiness turns 503 at once, requests sent after the signal
    (on new connections and on kept-alive ones) keep succeeding for the delay, none is refused
    or reset, and the process exits 0 once the delay and the drain are over."""
    delay = 3.0
    server = serve_mlp("--shutdown-delay-ms", str(int(delay * 1000)), "--drain-timeout-ms", "5000")
    signalled = threading.Event()
    stop = threading.Event()
    results = []  # (sent after the signal, outcome)

    def client(keep_alive):
        session = requests.Session() if keep_alive else None
        while not stop.is_set():
            after = signalled.is_set()
            try:
                post = session.post if session else requests.post
                r = post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=10, headers={} if session else {"Connection": "close"})
                results.append((after, r.status_code))
            except requests.RequestException as e:
                results.append((after, type(e).__name__))
            time.sleep(0.02)

    with ThreadPoolExecutor(4) as pool:
        workers = [pool.submit(client, keep_alive=i % 2 == 0) for i in range(4)]
        time.sleep(0.5)
        server.proc.send_signal(signal.SIGTERM)
        signalled.set()
        sent_at = time.monotonic()
        time.sleep(0.3)
        ready = requests.get(f"{server.url}/v2/health/ready", timeout=5)
        live = requests.get(f"{server.url}/v2/health/live", timeout=5)
        time.sleep(delay - 0.3 - 0.5)  # stop the load half a second before the delay ends
        stop.set()
        for w in workers:
            w.result()
    assert ready.status_code == 503 and live.status_code == 200
    after = [outcome for was_after, outcome in results if was_after]
    before = [outcome for was_after, outcome in results if not was_after]
    assert before and all(o == 200 for o in before), before
    assert len(after) >= 8 and all(o == 200 for o in after), f"during the shutdown delay: {after}"
    assert server.proc.wait(timeout=30) == 0
    exited = time.monotonic() - sent_at
    assert exited >= delay - 0.1, f"exited {exited:.1f} s after SIGTERM, before the {delay} s delay"
    log = "".join(server.log)
    assert "still serving during the shutdown delay" in log and "draining in-flight requests" in log


def test_ctrl_c_stops_without_the_shutdown_delay():
    """The delay is for orchestrators' SIGTERM: Ctrl-C (SIGINT) at a terminal drains and exits."""
    server = serve_mlp("--shutdown-delay-ms", "60000")
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - sent < 20
    log = "".join(server.log)
    assert "still serving during the shutdown delay" not in log and "draining in-flight requests" in log


def test_a_second_signal_skips_the_shutdown_delay():
    server = serve_mlp("--shutdown-delay-ms", "60000")
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    while requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code != 503:
        assert time.monotonic() < deadline, "readiness did not turn 503"
        time.sleep(0.05)
    assert requests.post(f"{server.url}/v2/models/mlp/infer", json=GOOD, timeout=5).status_code == 200
    sent = time.monotonic()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=20) == 0
    assert time.monotonic() - sent < 20
    assert any("skipping the rest of the shutdown delay" in line for line in server.log)


def big_binary_request(n):
    header = json.dumps({"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [n]}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return b"POST /v2/models/big_output/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(header), header)


def read_answer(sock, pause_every=None, pause=0.0):
    """Reads one HTTP answer with a Content-Length; with `pause_every`, sleeps `pause` seconds
    after every that many bytes (a slow reader). Returns (bytes of body read, complete)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"\r\ncontent-length: (\d+)", head.lower()).group(1))
    got, since_pause = len(body), len(body)
    try:
        while got < length:
            chunk = sock.recv(min(65536, length - got))
            if not chunk:
                return got, False
            got += len(chunk)
            since_pause += len(chunk)
            if pause_every and since_pause >= pause_every:
                time.sleep(pause)
                since_pause = 0
    except (ConnectionResetError, BrokenPipeError):
        return got, False
    return got, True


def test_a_slow_reader_keeps_its_answer_and_one_that_stops_reading_is_closed():
    """A 10 MB answer read slowly but steadily for several idle timeouts is delivered in full (the
    connection is busy answering, not idle); a client that stops reading it is closed once no
    byte could be written for the idle timeout (`write_stalled`)."""
    server = Service([BIN, "nimify", "serve", os.path.join(MODELS, "big_output.onnx"), "--host", "127.0.0.1", "--port", "0",
                      "--idle-timeout-ms", "1000", "--max-output-bytes", "0", "--batching", "false"])
    host, port = server.address.rsplit(":", 1)
    n = 2_500_000
    try:
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        slow.connect((host, int(port)))
        slow.settimeout(10)
        slow.sendall(big_binary_request(n))
        started = time.monotonic()
        # At most 2 MB a second: 64 KB, then a 30 ms pause, for about five idle timeouts.
        got, complete = read_answer(slow, pause_every=65536, pause=0.03)
        took = time.monotonic() - started
        assert complete and got > 4 * n, f"a steady reader got {got} bytes in {took:.1f} s and was cut off"
        assert took > 2, f"the reader was not slow ({took:.1f} s): the test proves nothing"
        slow.close()

        before = closed_counts(server)["write_stalled"]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        stalled.connect((host, int(port)))
        stalled.sendall(big_binary_request(n))
        time.sleep(0.5)
        stalled.settimeout(1)
        stalled.recv(65536)  # the answer has begun
        time.sleep(3)  # reads nothing for three idle timeouts
        stalled.settimeout(10)
        got, complete = read_answer_rest(stalled)
        assert not complete, "a reader that stopped for three idle timeouts still got its whole answer"
        assert closed_counts(server)["write_stalled"] == before + 1
        assert requests.post(f"{server.url}/v2/models/big_output/infer", json={"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [3]}]}, timeout=5).status_code == 200
    finally:
        server.stop()


def read_answer_rest(sock):
    """Drains `sock` until EOF or reset: (bytes read, whether 10 MB and more arrived)."""
    got = 0
    try:
        while chunk := sock.recv(1 << 20):
            got += len(chunk)
    except (ConnectionResetError, BrokenPipeError):
        pass
    return got, got >= 10_000_000


def test_answer_bodies_that_look_like_hyper_answers_are_left_alone(serve):
    """An echo model asked to return the bytes of one of hyper's bodiless answers: the body comes
    back byte for byte; only hyper's own answers are rewritten to JSON."""
    server = serve("strings")
    mimic = "HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"
    body = {"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": [mimic, mimic * 3, "x"]}],
            "outputs": [{"name": "echo", "parameters": {"binary_data": True}}]}
    for _ in range(20):
        r = requests.post(f"{server.url}/v2/models/strings/infer", json=body, timeout=5)
        assert r.status_code == 200
        header_len = int(r.headers["Inference-Header-Content-Length"])
        assert mimic.encode() in r.content[header_len:] and r.content.count(mimic.encode()) == 4


def test_a_request_hyper_cannot_parse_after_a_good_one_on_the_same_connection(serve):
    """Pipelined: the good request's answer, then the JSON 400 for the garbage behind it."""
    answer = raw(serve("mlp").address, b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\nGARBAGE\r\n\r\n")
    first, _, rest = answer.partition(b"HTTP/1.1 400 Bad Request\r\n")
    assert first.startswith(b"HTTP/1.1 200 OK\r\n") and b'"extensions"' in first, answer[:400]
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers and "not valid HTTP/1.1" in json.loads(body)["error"]


def test_an_answer_being_streamed_when_sigterm_arrives_is_finished(start):
    """A 39 MB JSON answer read slowly across SIGTERM: the drain lets it end whole, then the
    process exits 0."""
    server = start("big_output", "--max-output-bytes", "0", "--shutdown-delay-ms", "0")
    host, port = server.address.rsplit(":", 1)
    body = json.dumps({"inputs": [{"name": "n", "shape": [1], "datatype": "INT64", "data": [3_000_000]}]}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    sock.connect((host, int(port)))
    sock.settimeout(30)
    sock.sendall(b"POST /v2/models/big_output/infer HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    data = sock.recv(65536)
    assert data.startswith(b"HTTP/1.1 200") and b"transfer-encoding: chunked" in data.lower()
    server.proc.send_signal(signal.SIGTERM)
    while chunk := sock.recv(65536):
        data += chunk
        time.sleep(0.001)
    sock.close()
    assert data.endswith(b"\r\n0\r\n\r\n"), f"the chunked answer was cut: it ends with {data[-40:]!r}"
    assert data.count(b"1.2345679e-7") == 3_000_000
    assert server.proc.wait(timeout=30) == 0
