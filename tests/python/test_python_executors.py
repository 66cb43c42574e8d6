"""Jina executors written in Python, served unchanged by `ferroserve run`: real worker processes,
the tutorials' YAML, checked against the same class called in-process (with ferroserve's
jina/docarray shims, as the worker uses them when the real packages are not installed)."""
import concurrent.futures
import importlib.util
import json
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest

from minilm import REFERENCE
from servers import FIXTURES, ROOT, run

EXECUTORS = FIXTURES / "executors"
SHIM = ROOT / "crates" / "backends" / "python" / "python" / "shim"


def post(server, data, endpoint=None, parameters=None, path="/post"):
    body = {"data": data}
    if endpoint:
        body["execEndpoint"] = endpoint
    if parameters:
        body["parameters"] = parameters
    req = urllib.request.Request(f"http://{server.http}{path}", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())["data"]


def in_process(file, cls, method, texts, **kwargs):
    """Calls `cls.method` from `file` in this process, as Jina would, and returns the documents."""
    sys.path.insert(0, str(SHIM))
    try:
        spec = importlib.util.spec_from_file_location(f"ref_{cls}", EXECUTORS / file)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        from docarray import Document, DocumentArray

        executor = getattr(module, cls)(**kwargs)
        docs = DocumentArray([Document(text=t) for t in texts])
        out = getattr(executor, method)(docs=docs, parameters={})
        return out if out is not None else docs
    finally:
        sys.path.remove(str(SHIM))


@pytest.fixture(scope="module")
def tutorial():
    with run(EXECUTORS / "tutorial.yml") as s:
        yield s


def test_bare_requests_edits_docs_in_place_like_the_class_in_process(tutorial):
    texts = ["hello", "ferroserve"]
    want = [d.text for d in in_process("tutorial.py", "MyExecutor", "shout", texts, suffix="?")]
    got = post(tutorial, [{"text": t} for t in texts])
    assert [d["text"] for d in got] == want == ["HELLO?", "FERROSERVE?"]
    # An endpoint no handler names goes to the bare @requests handler too.
    assert post(tutorial, [{"text": "x"}], endpoint="/anything")[0]["text"] == "X?"


def test_requests_on_routes_by_endpoint_with_parameters(tutorial):
    got = post(tutorial, [{"text": "abc"}, {"text": "de"}], endpoint="/encode", parameters={"dim": 3})
    assert [d["embedding"] for d in got] == [[0.0, 3.0, 6.0], [0.0, 2.0, 4.0]]
    assert [d["text"] for d in got] == ["abc", "de"], "/encode leaves the text alone"
    # The POST /{endpoint} route is the same call.
    got = post(tutorial, [{"text": "q"}], path="/search")
    assert got[0]["matches"][0]["text"] == "match for q"
    assert got[0]["matches"][0]["scores"] == {"cosine": 0.5}


def test_dynamic_batching_gathers_concurrent_requests(tutorial):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda i: post(tutorial, [{"text": f"t{i}"}], endpoint="/batched"), range(8)))
    sizes = [a[0]["tags"]["batch"] for a in answers]
    assert [a[0]["text"] for a in answers] == [f"t{i}" for i in range(8)], "each request gets its own document"
    assert max(sizes) > 1, f"@dynamic_batching(preferred_batch_size=4) never batched: {sizes}"
    assert max(sizes) <= 4


def test_user_code_raising_is_a_500_naming_the_executor_and_exception(tutorial):
    with pytest.raises(urllib.error.HTTPError) as e:
        post(tutorial, [{"text": "x"}], endpoint="/fail")
    assert e.value.code == 500
    error = json.loads(e.value.read())["error"]
    assert "tutorial" in error and "ValueError: MyExecutor was asked to fail" in error, error
    assert post(tutorial, [{"text": "ok"}])[0]["text"] == "OK?"


def test_a_handler_past_timeout_send_is_a_504_and_the_worker_is_replaced(tutorial):
    with pytest.raises(urllib.error.HTTPError) as e:
        post(tutorial, [{"text": "x"}], endpoint="/sleep", parameters={"seconds": 60})
    assert e.value.code == 504
    assert "deadline" in json.loads(e.value.read())["error"]
    assert post(tutorial, [{"text": "after"}])[0]["text"] == "AFTER?"


def test_the_tutorials_deployment_yaml_runs_as_written():
    """jtype: Deployment with py_modules, timeout_ready: -1, replicas: 2, env
    CUDA_VISIBLE_DEVICES: RR and uses_dynamic_batching on /default."""
    with run(EXECUTORS / "deployment.yml", env={"CUDA_VISIBLE_DEVICES": "3,5"}) as s:
        prompts = [f"a picture of {i}" for i in range(20)]
        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda p: post(s, [{"text": p}]), prompts))
        want = in_process("text_to_image.py", "TextToImage", "generate_image", prompts)
        for got, ref in zip(answers, want):
            t = got[0]["tensor"]
            assert t["shape"] == [8, 8, 3]
            np.testing.assert_array_equal(np.array(t["data"], dtype=np.float32), ref.tensor.reshape(-1))
        devices = {a[0]["tags"]["device"] for a in answers}
        pids = {a[0]["tags"]["pid"] for a in answers}
        assert devices <= {"3", "5"} and len(pids) <= 2
        assert max(a[0]["tags"]["batch"] for a in answers) > 1, "uses_dynamic_batching on /default batched nothing"
        # Each replica has its own GPU: both show up over enough requests.
        for _ in range(10):
            if len(devices) == 2:
                break
            with concurrent.futures.ThreadPoolExecutor(10) as pool:
                more = list(pool.map(lambda p: post(s, [{"text": p}]), prompts[:10]))
            devices |= {a[0]["tags"]["device"] for a in more}
        assert devices == {"3", "5"}
        # A Deployment answers GET /{name}?txt= too.
        name = "executor0"
        with urllib.request.urlopen(f"http://{s.http}/{name}?txt=hi", timeout=30) as r:
            assert r.status == 200


def test_a_flow_of_a_python_executor_then_minilm():
    ref = json.loads(REFERENCE.read_text())
    with run(EXECUTORS / "flow.yml") as s:
        got = post(s, [{"text": "  " + t.replace(" ", "   ") + " "} for t in ref["sentences"]])
    for d, sentence, want in zip(got, ref["sentences"], ref["embeddings"]):
        assert d["text"] == sentence and d["tags"]["cleaned"] is True
        e = np.array(d["embedding"], dtype=np.float32)
        cos = float(e @ np.array(want, dtype=np.float32) / np.linalg.norm(e) / np.linalg.norm(want))
        assert cos > 0.99, (sentence, cos)
