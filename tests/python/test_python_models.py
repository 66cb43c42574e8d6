"""Triton Python-backend models (model.py + config.pbtxt or model.yaml) served by ferroserve's
Python workers: real worker processes, driven by tritonclient over HTTP and gRPC, checked against
the same model class called in-process; and the workers' faults."""
import concurrent.futures
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from servers import FIXTURES, ROOT, serve

SHIM = ROOT / "crates" / "backends" / "python" / "python"


@pytest.fixture(scope="module")
def repo():
    with tempfile.TemporaryDirectory() as d:
        for name in ["add_sub", "probe", "never_ready"]:
            shutil.copytree(FIXTURES / "triton" / name, pathlib.Path(d) / name)
        yield pathlib.Path(d)


@pytest.fixture(scope="module")
def server(repo):
    with serve(repo) as s:
        yield s


def reference_add_sub(in0, in1):
    """Triton's add_sub model.py called in-process, with the bundled triton_python_backend_utils."""
    sys.path.insert(0, str(SHIM))
    try:
        import importlib.util

        import triton_python_backend_utils as pb_utils

        spec = importlib.util.spec_from_file_location("add_sub_model", FIXTURES / "triton" / "add_sub" / "1" / "model.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        model = module.TritonPythonModel()
        config = {"output": [{"name": "OUTPUT0", "data_type": "TYPE_INT32", "dims": [4]},
                             {"name": "OUTPUT1", "data_type": "TYPE_INT32", "dims": [4]}]}
        model.initialize({"model_config": json.dumps(config)})

        class Request:
            def __init__(self, tensors):
                self.tensors = tensors

            def inputs(self):
                return self.tensors

        # The in-process call goes through get_input_tensor_by_name like the real one.
        request = Request([pb_utils.Tensor("INPUT0", in0), pb_utils.Tensor("INPUT1", in1)])
        [response] = model.execute([request])
        out = {t.name(): t.as_numpy() for t in response.output_tensors()}
        return out["OUTPUT0"], out["OUTPUT1"]
    finally:
        sys.path.remove(str(SHIM))


def infer_http(client, in0, in1):
    inputs = [httpclient.InferInput("INPUT0", list(in0.shape), "INT32"),
              httpclient.InferInput("INPUT1", list(in1.shape), "INT32")]
    inputs[0].set_data_from_numpy(in0)
    inputs[1].set_data_from_numpy(in1)
    r = client.infer("add_sub", inputs)
    return r.as_numpy("OUTPUT0"), r.as_numpy("OUTPUT1")


def test_add_sub_over_http_and_grpc_matches_the_model_in_process(server):
    rng = np.random.default_rng(7)
    in0 = rng.integers(-1000, 1000, size=(1, 4), dtype=np.int32)
    in1 = rng.integers(-1000, 1000, size=(1, 4), dtype=np.int32)
    want0, want1 = reference_add_sub(in0, in1)
    np.testing.assert_array_equal(want0, in0 + in1)
    http = httpclient.InferenceServerClient(server.http)
    got0, got1 = infer_http(http, in0, in1)
    np.testing.assert_array_equal(got0, want0)
    np.testing.assert_array_equal(got1, want1)
    grpc = grpcclient.InferenceServerClient(server.grpc)
    inputs = [grpcclient.InferInput("INPUT0", [1, 4], "INT32"), grpcclient.InferInput("INPUT1", [1, 4], "INT32")]
    inputs[0].set_data_from_numpy(in0)
    inputs[1].set_data_from_numpy(in1)
    r = grpc.infer("add_sub", inputs, outputs=[grpcclient.InferRequestedOutput("OUTPUT1")])
    np.testing.assert_array_equal(r.as_numpy("OUTPUT1"), want1)
    assert r.as_numpy("OUTPUT0") is None, "only the requested output comes back"
    # The configuration Triton's clients read is the config.pbtxt's.
    config = http.get_model_config("add_sub")
    assert config["backend"] == "python" and config["max_batch_size"] == 8
    meta = http.get_model_metadata("add_sub")
    assert [i["shape"] for i in meta["inputs"]] == [[-1, 4], [-1, 4]]


def metric(text, name, model):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and f'model="{model}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_concurrent_requests_are_batched_and_each_answer_is_its_own(server):
    url = f"http://{server.http}/metrics"
    before = urllib.request.urlopen(url).read().decode()
    rng = np.random.default_rng(11)
    pairs = [(rng.integers(-50, 50, size=(1, 4), dtype=np.int32), rng.integers(-50, 50, size=(1, 4), dtype=np.int32))
             for _ in range(48)]
    def one(pair):
        # tritonclient's HTTP client is not shared between threads: one per request.
        return infer_http(httpclient.InferenceServerClient(server.http), *pair)

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, pairs))
    for (in0, in1), (out0, out1) in zip(pairs, answers):
        np.testing.assert_array_equal(out0, in0 + in1)
        np.testing.assert_array_equal(out1, in0 - in1)
    after = urllib.request.urlopen(url).read().decode()
    batches = metric(after, "ferroserve_batch_size_count", "add_sub") - metric(before, "ferroserve_batch_size_count", "add_sub")
    rows = metric(after, "ferroserve_batch_size_sum", "add_sub") - metric(before, "ferroserve_batch_size_sum", "add_sub")
    assert rows == 48, after
    assert batches < 48, f"48 concurrent requests ran in {batches} batches: none was batched"


def probe(client, action=0, sleep_ms=0, timeout_us=None):
    inputs = [httpclient.InferInput("ACTION", [1], "INT32"), httpclient.InferInput("SLEEP_MS", [1], "INT32")]
    inputs[0].set_data_from_numpy(np.array([action], dtype=np.int32))
    inputs[1].set_data_from_numpy(np.array([sleep_ms], dtype=np.int32))
    kwargs = {"timeout": timeout_us} if timeout_us else {}
    r = client.infer("probe", inputs, **kwargs)
    return int(r.as_numpy("PID")[0]), r.as_numpy("CUDA")[0].decode(), r.as_numpy("SPAN")


def test_a_raising_model_is_a_500_naming_the_model_and_exception(server):
    client = httpclient.InferenceServerClient(server.http)
    pid, _, _ = probe(client)
    body = json.dumps({"inputs": [
        {"name": "ACTION", "shape": [1], "datatype": "INT32", "data": [1]},
        {"name": "SLEEP_MS", "shape": [1], "datatype": "INT32", "data": [0]}]}).encode()
    req = urllib.request.Request(f"http://{server.http}/v2/models/probe/infer", body, {"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req)
    assert e.value.code == 500
    error = json.loads(e.value.read())["error"]
    assert "model 'probe'" in error and "ValueError: probe was asked to fail" in error, error
    # The worker lives on: the same process answers the next request.
    assert probe(client)[0] == pid


def test_kill_9_during_a_request_answers_it_once_and_the_worker_comes_back(server):
    client = httpclient.InferenceServerClient(server.http)
    pid, _, _ = probe(client)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        slow = pool.submit(probe, httpclient.InferenceServerClient(server.http), 0, 3000)
        time.sleep(0.7)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(InferenceServerException) as e:
            slow.result(timeout=30)
    assert "killed" in str(e.value) and "model 'probe'" in str(e.value), str(e.value)
    new_pid, _, _ = probe(client)
    assert new_pid != pid
    assert probe(client)[0] == new_pid


def test_a_worker_that_hangs_past_the_deadline_is_killed_and_restarted(server):
    client = httpclient.InferenceServerClient(server.http)
    pid, _, _ = probe(client)
    with pytest.raises(InferenceServerException) as e:
        probe(client, 0, 60_000, timeout_us=500_000)
    assert "deadline" in str(e.value), str(e.value)
    new_pid, _, _ = probe(client)
    assert new_pid != pid
    with pytest.raises(OSError):
        os.kill(pid, 0)


def test_a_worker_that_writes_garbage_is_killed_and_restarted(server):
    client = httpclient.InferenceServerClient(server.http)
    pid, _, _ = probe(client)
    with pytest.raises(InferenceServerException) as e:
        probe(client, 2)
    assert "malformed" in str(e.value) or "frame" in str(e.value), str(e.value)
    new_pid, _, _ = probe(client)
    assert new_pid != pid


def test_a_model_that_never_becomes_ready_is_unavailable_with_the_reason(server):
    req = urllib.request.Request(f"http://{server.http}/v2/repository/index", b"{}", {"Content-Type": "application/json"})
    index = json.loads(urllib.request.urlopen(req).read())
    row = next(r for r in index if r["name"] == "never_ready")
    assert row["state"] == "UNAVAILABLE", row
    assert "timeout_ready" in row["reason"] and "initialising forever" in row["reason"], row
    # The others serve.
    assert {r["name"]: r["state"] for r in index}["add_sub"] == "READY"


def test_two_replicas_run_at_once_each_on_its_own_gpu(repo):
    """replicas: 2 on devices round-robin: two slow requests overlap on two worker processes, and
    each worker sees only its own GPU (the server's CUDA_VISIBLE_DEVICES, entry by entry)."""
    with tempfile.TemporaryDirectory() as d:
        model = pathlib.Path(d) / "probe"
        shutil.copytree(repo / "probe", model)
        with open(model / "model.yaml", "a") as f:
            f.write("replicas: 2\ndevices: round-robin\n")
        with serve(d, env={"CUDA_VISIBLE_DEVICES": "3,5"}) as s:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                a, b = pool.map(lambda _: probe(httpclient.InferenceServerClient(s.http), 0, 1500), range(2))
            assert a[0] != b[0], "two replicas, two processes"
            assert {a[1], b[1]} == {"3", "5"}
            (start_a, end_a), (start_b, end_b) = a[2], b[2]
            assert start_a < end_b and start_b < end_a, "the two requests ran at the same time"


def test_graceful_shutdown_calls_finalize_and_the_log_names_model_and_replica(repo):
    with tempfile.TemporaryDirectory() as d:
        shutil.copytree(repo / "add_sub", pathlib.Path(d) / "add_sub")
        s = serve(d)
        try:
            client = httpclient.InferenceServerClient(s.http)
            one = np.ones((1, 4), dtype=np.int32)
            infer_http(client, one, one)
        finally:
            s.stop()
        assert s.proc.returncode == 0, s.text()
        lines = [l for l in s.log if "Cleaning up..." in l]
        assert lines, "finalize() did not run:\n" + s.text()
        assert "model 'add_sub' replica 0" in lines[0], lines[0]
