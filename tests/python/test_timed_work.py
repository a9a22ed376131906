"""Overload, clients that leave, request deadlines and SIGTERM drain: behaviour that needs a
request to keep the model busy for a while.

How long the work takes is never left to the CPU. tests/models/slow.onnx runs a Loop whose trip
count is an input (`trips`), so each request chooses its own amount of work. Each test first runs
its own control: it measures, on the machine as loaded right now, the thing its timing depends on
(a deadline, or how long this client takes to send a burst of requests), then sizes the work by
measurement to at least `MARGIN` times that, and asserts the ordering it relies on (e.g. every
rejection answered while the long request was still running). The measured figures are in each
assertion's message, so a failure says what was measured against what, and the assertions mean
the same on a fast machine, a slow one, or one whose cores are busy with something else.
"""

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

import pytest
import requests

from conftest import metric

# Work is sized to at least this many times the deadline (or burst time) it must outlast.
MARGIN = 10
# Servers whose own limits must not cut the work short: no request deadline, a long drain. Work
# is kept well below the drain and the clients' timeout (`WORK_CEILING`).
NO_LIMITS = ("--batching", "false", "--request-timeout-ms", "0", "--drain-timeout-ms", "300000")
WORK_CEILING = 60


def work_body(trips):
    return {"inputs": [{"name": "x", "shape": [1, 8], "datatype": "FP32", "data": [1.0] * 8},
                       {"name": "trips", "shape": [1, 1], "datatype": "INT64", "data": [int(trips)]}]}


def run_work(server, trips, timeout=2 * WORK_CEILING):
    """One request to the slow model for `trips` Loop steps (0: no work at all)."""
    return requests.post(f"{server.url}/v2/models/slow/infer", json=work_body(trips), timeout=timeout)


def send_without_reading(server, trips):
    """A request written on a raw socket whose answer nobody reads: closing the socket is the
    client going away."""
    body = json.dumps(work_body(trips)).encode()
    host, port = server.address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=10)
    head = f"POST /v2/models/slow/infer HTTP/1.1\r\nHost: {server.address}\r\nContent-Length: {len(body)}\r\n\r\n"
    sock.sendall(head.encode() + body)
    return sock


def timed(call, *args, **kwargs):
    """(result or exception, monotonic time it came back)."""
    try:
        result = call(*args, **kwargs)
    except requests.RequestException as e:
        result = e
    return result, time.monotonic()


class Work(NamedTuple):
    trips: int
    seconds: float

    def __str__(self):
        return f"{self.trips} steps measured at {self.seconds * 1000:.0f} ms"


def size_work(server, at_least, against):
    """The control: a trip count whose request to `server` (started with `NO_LIMITS`) takes at least
    `at_least` seconds when measured now, with the measured time; `against` says what the work
    must outlast (printed with the figures)."""
    trips = 1000
    while True:
        start = time.monotonic()
        r = run_work(server, trips)
        took = time.monotonic() - start
        assert r.status_code == 200, r.text
        assert took < WORK_CEILING, f"{trips} steps took {took:.0f} s before reaching {at_least:.1f} s: the machine is too slow for this test"
        if took >= at_least:
            print(f"control: {trips} steps took {took * 1000:.0f} ms, sized to at least {at_least * 1000:.0f} ms against {against}")
            return Work(trips, took)
        # Aim above the need so that one more measurement usually suffices.
        trips = int(trips * min(100.0, max(2.0, 1.5 * at_least / max(took, 1e-3))))


def size_work_against_burst(server, pool, n):
    """The control for bursts: measures how long this client takes to have `n` concurrent
    requests (no work) answered by `server` now, and sizes work to `MARGIN` times that (at least
    half a second). Returns the work and the burst's time."""
    start = time.monotonic()
    list(pool.map(lambda _: run_work(server, 0), range(n)))
    sending = time.monotonic() - start
    work = size_work(server, max(MARGIN * sending, 0.5), f"{MARGIN} x a burst of {n} ({sending * 1000:.0f} ms)")
    return work, sending


def executions_started(server):
    # The queue-time histogram gets one observation when a request's execution begins.
    return metric(server, "nimify_queue_duration_seconds_count", "slow")


def pending(server):
    return metric(server, "nv_inference_pending_request_count", "slow")


def wait_until(condition, what, timeout=60):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def start_long(server, pool, work):
    """Submits one request for `work` and returns its future once its execution has begun."""
    started = executions_started(server)
    long = pool.submit(timed, run_work, server, work.trips)
    wait_until(lambda: executions_started(server) > started, "the long request to start executing")
    return long


def burst_while_busy(server, burst, admitted, refusal, reason, during):
    """One long request occupies the only session; a burst of `burst` cheap requests is sent while
    it runs, of which exactly `admitted` may wait their turn and every other one must be refused
    at once with 503, Retry-After and an error containing `refusal`. Once the refusals are answered
    and the admitted ones are queued, `during()` runs (still inside the long request). Asserts all
    of that, with the control's figures in each message, and returns what `during()` returned and
    how many refusals `nimify_requests_rejected_total{reason=...}` counted meanwhile."""
    with ThreadPoolExecutor(burst + 1) as pool:
        work, sending = size_work_against_burst(server, pool, burst)
        counted_before = metric(server, "nimify_requests_rejected_total", "slow", reason=reason)
        long = start_long(server, pool, work)
        sent = [pool.submit(timed, run_work, server, 0) for _ in range(burst)]
        wait_until(lambda: sum(f.done() for f in sent) >= burst - admitted and pending(server) >= admitted, "the refusals")
        seen = during()
        seen_at = time.monotonic()
        answers = [f.result() for f in sent]
        (long_response, long_done) = long.result()
    assert long_response.status_code == 200, long_response.text
    codes = [r.status_code for r, _ in answers]
    refused = [(r, at) for r, at in answers if r.status_code == 503]
    control = f"work {work}, a burst of {burst} took {sending * 1000:.0f} ms to send when measured, codes {codes}"
    assert refused and max(at for _, at in refused) < long_done, f"refusals must come while the long request runs: {control}"
    assert seen_at < long_done, f"the checks must run while the long request runs: {control}"
    assert codes.count(200) == admitted and len(refused) == burst - admitted, control
    for r, _ in refused:
        assert r.headers["Retry-After"] == "1" and refusal in r.json()["error"], r.text
    return seen, metric(server, "nimify_requests_rejected_total", "slow", reason=reason) - counted_before


def test_full_queue_answers_503_with_retry_after_and_stays_ready(start):
    server = start("slow", "--queue-capacity", "2", *NO_LIMITS)

    def full_queue():
        # Full queue, long request running: the server stays ready.
        return requests.get(f"{server.url}/v2/health/ready", timeout=5).status_code

    ready, counted = burst_while_busy(server, burst=23, admitted=2, refusal="full queue", reason="queue_full", during=full_queue)
    assert ready == 200
    assert counted == 21
    assert run_work(server, 0).status_code == 200


def test_in_flight_cap_answers_503_and_probes_stay_open(start):
    server = start("slow", "--max-in-flight", "2", *NO_LIMITS)

    def both_slots_held():
        # The long request and one request of the burst hold both slots: probes and metrics stay
        # open, anything else is refused.
        probes = [requests.get(f"{server.url}{path}", timeout=5).status_code for path in ("/v2/health/ready", "/metrics")]
        return probes, requests.get(f"{server.url}/v2/models/slow", timeout=5)

    def unrouted():
        return metric(server, "nimify_requests_rejected_total", "", version="", reason="in_flight")

    unrouted_before = unrouted()
    (probes, capped_get), counted = burst_while_busy(server, burst=11, admitted=1, refusal="in flight", reason="in_flight", during=both_slots_held)
    assert probes == [200, 200]
    assert capped_get.status_code == 503 and "in flight" in capped_get.json()["error"]
    # The burst's ten refusals and the capped GET of /v2/models/slow count for the model; none
    # went without one.
    assert counted == 11
    assert metric(server, "nimify_requests_rejected_total", "slow", reason="queue_full") == 0
    assert unrouted() == unrouted_before


def test_requests_of_clients_that_left_are_not_executed(start):
    server = start("slow", *NO_LIMITS)
    leaving = 5
    with ThreadPoolExecutor(leaving + 1) as pool:
        work, sending = size_work_against_burst(server, pool, leaving)
        cancelled_before = metric(server, "nimify_requests_cancelled_total", "slow", reason="disconnect")
        executed_before = metric(server, "nv_inference_exec_count", "slow")
        long = start_long(server, pool, work)
        # Queued behind the long request, these clients go away before it ends.
        sockets = [send_without_reading(server, 0) for _ in range(leaving)]
        wait_until(lambda: pending(server) == leaving, "the requests to queue")
        for sock in sockets:
            sock.close()
        left = time.monotonic()
        (long_response, long_done) = long.result()
    assert long_response.status_code == 200, long_response.text
    control = f"work {work} against a burst of {leaving} measured at {sending * 1000:.0f} ms"
    assert left < long_done, f"the clients must leave while the long request runs: {control}"
    wait_until(lambda: metric(server, "nimify_requests_cancelled_total", "slow", reason="disconnect") - cancelled_before >= leaving, "the cancellations to be counted")
    assert metric(server, "nimify_requests_cancelled_total", "slow", reason="disconnect") - cancelled_before == leaving
    assert metric(server, "nv_inference_exec_count", "slow") - executed_before == 1  # only the long request ran
    assert pending(server) == 0


def test_request_timeout(start):
    deadline_ms = 50
    # The control runs on a server without the deadline; the test on one with it.
    work = size_work(start("slow", *NO_LIMITS), MARGIN * deadline_ms / 1000, f"{MARGIN} x the deadline")
    server = start("slow", "--batching", "false", "--request-timeout-ms", str(deadline_ms))
    sent = time.monotonic()
    r = run_work(server, work.trips)
    took = time.monotonic() - sent
    control = f"work {work} against a {deadline_ms} ms deadline, answered after {took * 1000:.0f} ms"
    assert r.status_code == 504, f"{r.status_code} {r.text}: {control}"
    assert f"{deadline_ms} ms" in r.json()["error"]
    assert took < work.seconds, f"the 504 must not wait for the work to end: {control}"


# Also on the one-thread runtime a server gets on one CPU, where the signal, the drain and the
# answers share the thread.
@pytest.mark.parametrize("runtime_threads", [None, "1"])
def test_sigterm_drains_in_flight_requests(start, runtime_threads):
    env = None if runtime_threads is None else {**os.environ, "TOKIO_WORKER_THREADS": runtime_threads}
    server = start("slow", *NO_LIMITS, env=env)
    queued = 5
    with ThreadPoolExecutor(queued + 1) as pool:
        work, sending = size_work_against_burst(server, pool, queued)
        long = start_long(server, pool, work)
        behind = [pool.submit(timed, run_work, server, 0) for _ in range(queued)]
        wait_until(lambda: pending(server) == queued, "the requests to queue")
        server.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        (long_response, long_done) = long.result()
        answers = [f.result() for f in behind]
    control = f"work {work} (a burst of {queued} took {sending * 1000:.0f} ms), signalled {(long_done - signalled) * 1000:.0f} ms before it ended"
    assert long_done > signalled, f"the signal must come while the long request runs: {control}"
    assert long_response.status_code == 200, control
    assert [r.status_code for r, _ in answers] == [200] * queued, control
    assert server.proc.wait(timeout=60) == 0
    assert any("draining in-flight requests" in line for line in server.log)


def cpu_seconds(server):
    """User + system CPU time of the server process so far, from /proc/PID/stat."""
    with open(f"/proc/{server.proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_stays_flat(server, seconds=1.0):
    """CPU seconds the server burns over `seconds` of wall time while it has nothing to do."""
    before = cpu_seconds(server)
    time.sleep(seconds)
    return cpu_seconds(server) - before


def terminated(server, reason):
    return metric(server, "nimify_runs_terminated_total", "slow", reason=reason)


ONE_SESSION = ("--batching", "false", "--instances", "1", "--intra-threads", "1")


def test_a_run_past_its_deadline_is_stopped(start):
    """One session, one intra-op thread: work sized to 20 x the deadline is cut at the deadline,
    the ONNX Runtime run stops (no more CPU time burnt, the counter rises) and the next request is
    served at once instead of after the rest of the work."""
    deadline_ms = 300
    work = size_work(start("slow", *NO_LIMITS, *ONE_SESSION[2:]), 20 * deadline_ms / 1000, f"20 x the {deadline_ms} ms deadline")
    server = start("slow", *ONE_SESSION, "--request-timeout-ms", str(deadline_ms))
    r = run_work(server, work.trips)
    assert r.status_code == 504, r.text
    timed_out = time.monotonic()
    wait_until(lambda: terminated(server, "deadline") == 1, "the stopped run to be counted", timeout=work.seconds)
    burnt = cpu_stays_flat(server)
    small = run_work(server, 0)
    answered = time.monotonic() - timed_out
    control = f"work {work}, deadline {deadline_ms} ms"
    assert small.status_code == 200, small.text
    assert burnt < 0.2, f"the server burnt {burnt:.2f} CPU s in the second after the 504: the run goes on ({control})"
    assert answered < work.seconds / 2, f"the next request waited {answered:.1f} s: {control}"
    assert terminated(server, "disconnect") == 0


def test_a_run_whose_clients_all_left_is_stopped_and_one_still_wanted_is_not(start):
    """Batching on, one session: two requests merged into one run (the first waits up to 2 s for
    company). When one of the two clients leaves, the run goes on for the other; when both leave,
    it stops."""
    work = size_work(start("slow", *NO_LIMITS, *ONE_SESSION[2:]), 3.0, "a client leaving mid-run")
    server = start("slow", "--batching", "true", "--batch-policy", "fixed", "--max-queue-delay-us", "2000000", "--instances", "1", "--intra-threads", "1", "--request-timeout-ms", "0")
    control = f"work {work}"
    with ThreadPoolExecutor(2) as pool:
        # One stays, one leaves: the shared run must finish.
        executed = metric(server, "nv_inference_exec_count", "slow")
        leaving = send_without_reading(server, work.trips)
        staying = pool.submit(timed, run_work, server, work.trips)
        wait_until(lambda: executions_started(server) >= 2, "both requests to start in one run")
        leaving.close()
        (r, _) = staying.result()
        assert r.status_code == 200, f"{r.text}: {control}"
        assert metric(server, "nv_inference_exec_count", "slow") - executed == 1, "the two requests did not share a run"
        assert terminated(server, "disconnect") == 0
        # Both leave: the run stops.
        socks = [send_without_reading(server, work.trips) for _ in range(2)]
        wait_until(lambda: executions_started(server) >= 4, "the second pair to start in one run")
        for sock in socks:
            sock.close()
        left = time.monotonic()
        wait_until(lambda: terminated(server, "disconnect") == 1, "the stopped run to be counted", timeout=work.seconds * 2)
        stopped_after = time.monotonic() - left
    burnt = cpu_stays_flat(server)
    assert burnt < 0.2, f"the server burnt {burnt:.2f} CPU s after both clients left: {control}"
    assert stopped_after < work.seconds / 2, f"the run stopped {stopped_after:.1f} s after the clients left: {control}"
    assert run_work(server, 0).status_code == 200
