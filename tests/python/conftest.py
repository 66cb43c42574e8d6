"""Starts a real `ferroserve serve` on 127.0.0.1 with an ephemeral port for the Python tests."""
import os
import pathlib
import tempfile

import pytest

from servers import ROOT, serve


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
    try:
        with serve(repo.name) as s:
            yield {"http": s.http, "grpc": s.grpc}
    finally:
        repo.cleanup()


@pytest.fixture(scope="session")
def server(ferroserve):
    """'host:port' of the server's HTTP listener."""
    return ferroserve["http"]


@pytest.fixture(scope="session")
def grpc_server(ferroserve):
    """'host:port' of the server's gRPC listener."""
    return ferroserve["grpc"]
