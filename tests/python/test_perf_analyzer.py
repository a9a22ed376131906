"""Triton's own perf_analyzer (from PyPI tritonclient==2.41.0) drives a nimify service over
HTTP with binary tensors and over gRPC (sync, async and streaming), with zero errors."""

import os
import re
import subprocess

import pytest
import requests

from conftest import MODELS, ROOT, Server

PERF_ANALYZER = os.environ.get("PERF_ANALYZER", os.path.join(ROOT, ".venv-pa", "bin", "perf_analyzer"))


def cuda_runtime_dir():
    """perf_analyzer links libcudart even for HTTP; the nvidia-cuda-runtime-cu12 wheel has it."""
    base = os.path.join(os.path.dirname(os.path.dirname(PERF_ANALYZER)), "lib")
    for dirpath, _, files in os.walk(base):
        if any(f.startswith("libcudart.so") for f in files):
            return dirpath
    raise AssertionError(f"libcudart not found under {base}; run `cargo xtask test` to install the perf_analyzer tools")


def assert_served_without_failures(server):
    """The server counted no failed request and many successful ones for the MLP."""
    metrics = requests.get(f"{server.url}/metrics", timeout=5).text
    failures = re.search(r'nv_inference_request_failure\{model="mlp",version="1"\} (\S+)', metrics).group(1)
    successes = re.search(r'nv_inference_request_success\{model="mlp",version="1"\} (\S+)', metrics).group(1)
    assert float(failures) == 0
    assert float(successes) > 100


def test_perf_analyzer_runs_clean():
    assert os.path.exists(PERF_ANALYZER), f"{PERF_ANALYZER} missing; run `cargo xtask test`"
    server = Server(os.path.join(MODELS, "mlp.onnx"))
    try:
        env = dict(os.environ, LD_LIBRARY_PATH=cuda_runtime_dir())
        r = subprocess.run(
            [PERF_ANALYZER, "-m", "mlp", "-u", server.address, "-i", "http", "--concurrency-range", "4",
             "--measurement-interval", "1700", "--stability-percentage", "100", "--max-trials", "3"],
            capture_output=True, text=True, timeout=120, env=env,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        throughput = float(re.search(r"Throughput: ([0-9.]+) infer/sec", r.stdout).group(1))
        assert throughput > 0, r.stdout
        assert_served_without_failures(server)
    finally:
        server.stop()


@pytest.mark.parametrize("mode", [[], ["--async"], ["--streaming"]], ids=["sync", "async", "streaming"])
def test_perf_analyzer_over_grpc_runs_clean(mode):
    assert os.path.exists(PERF_ANALYZER), f"{PERF_ANALYZER} missing; run `cargo xtask test`"
    server = Server(os.path.join(MODELS, "mlp.onnx"))
    try:
        env = dict(os.environ, LD_LIBRARY_PATH=cuda_runtime_dir())
        r = subprocess.run(
            [PERF_ANALYZER, "-m", "mlp", "-u", server.grpc_address, "-i", "grpc", *mode, "--concurrency-range", "1:8:3",
             # Latency on a 2-core machine shared with other tests varies a lot between windows:
             # stability is not what this test measures, errors are.
             "--measurement-interval", "1000", "--stability-percentage", "1000", "--max-trials", "5"],
            capture_output=True, text=True, timeout=180, env=env,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        rows = re.findall(r"Concurrency: (\d+), throughput: ([0-9.]+) infer/sec", r.stdout)
        assert [int(c) for c, _ in rows] == [1, 4, 7], r.stdout
        assert all(float(t) > 0 for _, t in rows), r.stdout
        assert_served_without_failures(server)
    finally:
        server.stop()
