"""Starts a real `ferroserve serve` on 127.0.0.1 with an ephemeral port for the Python tests."""
import os
import pathlib
import re
import subprocess
import tempfile
import threading
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _binary() -> pathlib.Path:
    if os.environ.get("FERROSERVE_BIN"):
        return pathlib.Path(os.environ["FERROSERVE_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "ferroserve"


@pytest.fixture(scope="session")
def ferroserve():
    """Yields {"http": "host:port", "grpc": "host:port"} of a server over simple, identity,
    string_identity, minilm (plain) and tiny-bert-classifier (a text-classification task)."""
    repo = tempfile.TemporaryDirectory()
    for name in ["simple", "identity", "string_identity", "minilm"]:
        # Only the version folders: the demo's model.yaml makes minilm a text-embedding task,
        # and these tests speak tensors to the plain model.
        (pathlib.Path(repo.name) / name).mkdir()
        os.symlink(ROOT / "examples" / "models" / name / "1", pathlib.Path(repo.name) / name / "1")
    # A task model as configured: text in (BYTES), class probabilities and labels out.
    os.symlink(ROOT / "tests" / "fixtures" / "models" / "tiny-bert-classifier",
               pathlib.Path(repo.name) / "tiny-bert-classifier")
    proc = subprocess.Popen(
        [str(_binary()), "serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--management-port", "0",
         "--model-repository", repo.name],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    found = {}
    ready = threading.Event()
    log = []

    def drain():
        for line in proc.stderr:
            log.append(line)
            m = re.search(r"(HTTP|gRPC) listening on http://([0-9.]+:[0-9]+)", line)
            if m:
                found[m.group(1)] = m.group(2)
                if "HTTP" in found and "gRPC" in found:
                    ready.set()

    threading.Thread(target=drain, daemon=True).start()
    try:
        if not ready.wait(30):
            raise RuntimeError("ferroserve did not start:\n" + "".join(log))
        addr = found["HTTP"]
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://{addr}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("ferroserve never became ready:\n" + "".join(log))
            time.sleep(0.05)
        yield {"http": addr, "grpc": found["gRPC"]}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        repo.cleanup()


@pytest.fixture(scope="session")
def server(ferroserve):
    """'host:port' of the server's HTTP listener."""
    return ferroserve["http"]


@pytest.fixture(scope="session")
def grpc_server(ferroserve):
    """'host:port' of the server's gRPC listener."""
    return ferroserve["grpc"]
