"""NVIDIA's perf_analyzer (from the tritonclient 2.50.0 wheel) measuring ferroserve."""
import os
import pathlib
import subprocess
import sys

import pytest

VENV_BIN = pathlib.Path(sys.executable).parent


def perf_analyzer_env():
    """perf_analyzer links libcudart even for CPU runs; the nvidia-cuda-runtime-cu12 wheel has it."""
    import nvidia.cuda_runtime

    lib = pathlib.Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = f"{lib}:{env.get('LD_LIBRARY_PATH', '')}"
    return env


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_measures_simple(ferroserve, protocol):
    url = ferroserve["http" if protocol == "http" else "grpc"]
    cmd = [
        str(VENV_BIN / "perf_analyzer"), "-m", "simple", "-u", url, "-i", protocol,
        # simple's batch dimension is dynamic and not batched by the server: give the shape.
        "--shape", "INPUT0:1,16", "--shape", "INPUT1:1,16",
        "--concurrency-range", "1:4:3",
        "--measurement-mode", "count_windows", "--measurement-request-count", "200",
        # A shared 2-core machine is noisy; completing without errors is what is checked here,
        # speed is BENCHMARKS.md's business.
        "--stability-percentage", "100", "--max-trials", "20",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=perf_analyzer_env())
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "error" not in out.lower(), out
    assert "Concurrency: 4, throughput:" in out, out
    assert "Successful request count:" in out, out
