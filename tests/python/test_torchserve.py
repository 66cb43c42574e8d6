"""TorchServe users switch as they are: archives made by the real torch-model-archiver (zip, tgz,
no-archive), TorchServe's image_classifier on TorchScript, a custom handler with batching from its
model-config.yaml, TorchScript model folders (exported to ONNX, or run by Python workers when the
export fails), unsafe archives, the management API and the `torchserve` command line — through a
real ferroserve on 127.0.0.1, checked against TorchServe's own worker code (ts.model_loader,
ts.service, ts.protocol) and TorchScript run in-process in the torch venv
(tests/fixtures/torchserve/build.py, tests/python/torch_env.py)."""
import base64
import concurrent.futures
import hashlib
import http.client
import json
import os
import pathlib
import shutil
import subprocess
import time
import urllib.parse
import uuid
import zipfile

import numpy as np
import pytest

import torch_env
from servers import ROOT, Server, binary, free_port

FIXTURES = ROOT / "tests" / "fixtures" / "torchserve"
# Probabilities of the image classifiers: the reference decodes and resizes with PIL, ferroserve
# natively.
PROB_TOLERANCE = 1e-3


# --- fixtures -------------------------------------------------------------------------------


class Built:
    def __init__(self, out):
        self.out = out
        self.expected = json.loads((out / "expected.json").read_text())

    def image(self, name):
        return (self.out / "images" / name).read_bytes()

    @property
    def images(self):
        return self.expected["images"]


@pytest.fixture(scope="module")
def torch_python():
    return torch_env.python()


@pytest.fixture(scope="module")
def built(tmp_path_factory, torch_python):
    """Models, archives, images and reference answers, made once (tests/fixtures/torchserve/build.py)."""
    out = tmp_path_factory.mktemp("torchserve-fixtures")
    r = subprocess.run([str(torch_python), str(FIXTURES / "build.py"), str(out)], capture_output=True, text=True)
    assert r.returncode == 0, f"build.py failed:\n{r.stdout}\n{r.stderr}"
    return Built(out)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Environment of every server here: a private FERROSERVE_HOME (caches, the pid file of
    `torchserve`), shared by the module so that a TorchScript model is exported once."""
    d = tmp_path_factory.mktemp("ferroserve-home")
    env = {"FERROSERVE_HOME": str(d)}
    if "ORT_DYLIB_PATH" not in os.environ:
        real = pathlib.Path(os.environ.get("FERROSERVE_HOME", pathlib.Path.home() / ".ferroserve"))
        lib = real / "lib" / "libonnxruntime.so"
        if lib.exists():
            env["ORT_DYLIB_PATH"] = str(lib)
    return env


def serve_store(store, models, home, python, cache, extra=()):
    """`ferroserve serve --model-store STORE [--models MODELS]` on ephemeral ports."""
    args = ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--management-port", "0",
            "--model-store", str(store), "--store-cache", str(cache)]
    if models:
        args += ["--models", models]
    return Server([*args, *extra], env=home, python=python, listeners={"HTTP", "gRPC", "management API"})


def link_or_copy(src, dst):
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy(src, dst)


# --- HTTP -----------------------------------------------------------------------------------


def call(addr, method, path, body=None, headers=None, timeout=120):
    """One request on a fresh connection -> (status, {lower-case header: value}, body bytes)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def call_json(addr, method, path, body=None, headers=None):
    status, _, data = call(addr, method, path, body, headers)
    try:
        return status, json.loads(data)
    except ValueError:
        raise AssertionError(f"{method} {path}: {status}, not JSON: {data[:500]!r}")


def multipart(fields):
    """fields: [(name, filename or None, content type or None, bytes)] -> (body, content type)."""
    boundary = "ferroserve-" + uuid.uuid4().hex
    body = bytearray()
    for name, filename, content_type, data in fields:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type:
            body += f"Content-Type: {content_type}\r\n".encode()
        body += b"\r\n" + data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f"multipart/form-data; boundary={boundary}"


def image_requests(name, blob, content_type):
    """The ways TorchServe's users send an image: (what, method, body, headers)."""
    form, form_type = multipart([("data", name, content_type, blob)])
    return [
        # curl -T FILE: a PUT of the raw bytes, no content type (curl asks 100-continue for big files).
        ("PUT like curl -T", "PUT", blob, {"Expect": "100-continue"}),
        ("POST of the bytes", "POST", blob, {"Content-Type": content_type}),
        ("multipart field 'data'", "POST", form, {"Content-Type": form_type}),
        ("base64 text", "POST", base64.b64encode(blob), {"Content-Type": "text/plain"}),
    ]


class Pairs(list):
    """A JSON object's members, in order (object_pairs_hook)."""


def check_classification(body, expected, what):
    """ImageClassifier answers {label: probability} for the top 5, best first."""
    got = json.loads(body, object_pairs_hook=Pairs)
    assert isinstance(got, Pairs), f"{what}: not a JSON object: {body[:300]!r}"
    labels, want_labels = [k for k, _ in got], [k for k, _ in expected]
    assert labels == want_labels, f"{what}: top 5 {labels}, TorchServe's {want_labels}"
    for (label, p), (_, q) in zip(got, expected):
        assert isinstance(p, float) and abs(p - q) <= PROB_TOLERANCE, f"{what}: {label} {p}, TorchServe's {q}"


def classify_all(addr, built, route, model):
    """Every image, every way of sending it, to `route`; each answer checked."""
    for name, meta in built.images.items():
        blob = built.image(name)
        for what, method, body, headers in image_requests(name, blob, meta["content_type"]):
            status, _, data = call(addr, method, route, body, headers)
            assert status == 200, f"{route} {name} ({what}): {status} {data[:500]!r}"
            check_classification(data, built.expected["classify"][model][name], f"{route} {name} ({what})")


# --- 1. The tutorial ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fancy(built, home, torch_python, tmp_path_factory):
    with serve_store(built.out / "store", "my_fancy_model=my_fancy_model.mar", home, torch_python,
                     tmp_path_factory.mktemp("cache")) as s:
        yield s


def test_tutorial_resnet_answers_like_torchserves_image_classifier(built, fancy):
    """TorchServe's getting-started: a scripted ResNet-18 archived with --handler image_classifier,
    served with --models my_fancy_model=my_fancy_model.mar; curl -T, POST, multipart and base64."""
    classify_all(fancy.http, built, "/predictions/my_fancy_model", "my_fancy_model")
    # TorchServe's ping.
    status, body = call_json(fancy.http, "GET", "/ping")
    assert status == 200 and body == {"status": "Healthy"}, body


def test_the_archives_own_version_string_names_the_version(built, fancy):
    """torch-model-archiver --version 1.0: TorchServe's clients call /predictions/NAME/1.0."""
    assert built.expected["manifest"]["model"]["modelVersion"] == "1.0"
    name = "street.jpg"
    for version in ["1.0", "1"]:
        status, _, data = call(fancy.http, "POST", f"/predictions/my_fancy_model/{version}", built.image(name),
                               {"Content-Type": "image/jpeg"})
        assert status == 200, f"version {version}: {status} {data[:300]!r}"
        check_classification(data, built.expected["classify"]["my_fancy_model"][name], f"version {version}")


def test_models_all_serves_every_archive_each_like_its_reference(built, home, torch_python, tmp_path_factory):
    """A second network (SqueezeNet 1.1, labels in the {"0": "tench"} form) beside the ResNet,
    both from --models all."""
    with serve_store(built.out / "store", "all", home, torch_python, tmp_path_factory.mktemp("cache")) as s:
        for model in ["my_fancy_model", "squeezenet"]:
            for name, meta in built.images.items():
                status, _, data = call(s.http, "POST", f"/predictions/{model}", built.image(name),
                                       {"Content-Type": meta["content_type"]})
                assert status == 200, f"{model} {name}: {status} {data[:300]!r}"
                check_classification(data, built.expected["classify"][model][name], f"{model} {name}")
        # The two networks do not answer alike (the test would not tell them apart otherwise).
        a, b = (built.expected["classify"][m]["street.jpg"] for m in ["my_fancy_model", "squeezenet"])
        assert [k for k, _ in a] != [k for k, _ in b]


# --- 2. A custom handler with batching ------------------------------------------------------


def text_request(spec):
    """TEXT_REQUESTS of build.py as HTTP: (path, body, headers)."""
    path = "/predictions/textstats"
    if spec.get("query"):
        path += "?" + urllib.parse.urlencode(spec["query"])
    headers = {"x-row-tag": spec["tag"]} if spec["tag"] is not None else {}
    text = spec["text"].encode()
    form = spec["form"]
    if form == "plain":
        headers["Content-Type"] = "text/plain; charset=utf-8"
        body = text
    elif form == "raw":
        body = text
    elif form == "json":
        headers["Content-Type"] = "application/json"
        body = json.dumps({"text": spec["text"]}).encode()
    elif form == "field":
        body, headers["Content-Type"] = multipart([("data", None, None, text)])
    elif form == "file":
        body, headers["Content-Type"] = multipart([("data", "note.txt", "text/plain", text)])
    else:
        raise ValueError(form)
    return path, body, headers


@pytest.fixture(scope="module")
def textstats(built, home, torch_python, tmp_path_factory):
    with serve_store(built.out / "custom", "textstats=textstats.mar", home, torch_python,
                     tmp_path_factory.mktemp("cache")) as s:
        yield s


def test_custom_handler_batches_and_answers_like_torchserve(built, textstats):
    """text_handler.py (a BaseHandler subclass) with model-config.yaml's batchSize 4 and
    maxBatchDelay 500: 8 concurrent requests, each answered as TorchServe's worker answers its
    row; batches of more than one row; the x-row-tag header reaches the handler."""
    specs = built.expected["text"]
    assert len(specs) == 8

    def send(spec):
        path, body, headers = text_request(spec)
        return call(textstats.http, "POST", path, body, headers)

    with concurrent.futures.ThreadPoolExecutor(len(specs)) as pool:
        answers = list(pool.map(send, specs))
    batches = []
    for spec, (status, headers, data) in zip(specs, answers):
        what = f"{spec['form']} {spec['text']!r}"
        assert status == 200, f"{what}: {status} {data[:500]!r}"
        assert headers.get("content-type") == spec["content_type"], f"{what}: {headers}"
        got = json.loads(data)
        want = dict(spec["answer"])
        batches.append(got.pop("batch"))
        want.pop("batch")
        np.testing.assert_allclose(got.pop("scores"), want.pop("scores"), rtol=1e-5, atol=1e-5, err_msg=what)
        assert got == want, what
    assert all(1 <= b <= 4 for b in batches), batches
    assert max(batches) > 1, f"8 concurrent requests, batchSize 4, 500 ms: batches of {batches}"
    # model-config.yaml is the model's configuration.
    status, d = call_json(textstats.management, "GET", "/models/textstats")
    assert status == 200, d
    v = d["versions"][0]
    assert v["max_batch_size"] == 4 and v["dynamic_batching"]["max_queue_delay_us"] == 500_000, d
    assert v["replicas"] == 1, d


# --- 3. TorchScript model folders -----------------------------------------------------------


@pytest.fixture(scope="module")
def torchscript(built, home, torch_python):
    with Server(["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", "--management-port", "0",
                 "--model-repository", str(built.out / "repo")], env=home, python=torch_python) as s:
        yield s


def v2_infer(addr, model, in_name, out_name, rows):
    rows = np.asarray(rows, dtype=np.float32)
    body = json.dumps({"inputs": [{"name": in_name, "shape": list(rows.shape), "datatype": "FP32",
                                   "data": rows.ravel().tolist()}]}).encode()
    status, answer = call_json(addr, "POST", f"/v2/models/{model}/infer", body, {"Content-Type": "application/json"})
    assert status == 200, f"{model}: {status} {answer}"
    [out] = [o for o in answer["outputs"] if o["name"] == out_name]
    assert out["datatype"] == "FP32", out
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


@pytest.mark.parametrize("model,tolerance", [("cummax", 1e-5), ("mlp", 1e-4)])
def test_torchscript_folders_answer_like_torchscript(built, torchscript, model, tolerance):
    """m/1/model.pt with inputs and outputs in model.yaml: V2 answers equal TorchScript's, for a
    batch of 3 and for 4 concurrent single rows."""
    ref = built.expected["torchscript"][model]
    x, y = np.asarray(ref["x"], dtype=np.float32), np.asarray(ref["y"], dtype=np.float32)
    got = v2_infer(torchscript.http, model, ref["input"], ref["output"], x[:3])
    assert got.shape == y[:3].shape
    np.testing.assert_allclose(got, y[:3], rtol=0, atol=tolerance)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        singles = list(pool.map(lambda i: v2_infer(torchscript.http, model, ref["input"], ref["output"], x[i:i + 1]),
                                range(3, 7)))
    np.testing.assert_allclose(np.concatenate(singles), y[3:7], rtol=0, atol=tolerance)


def test_a_torchscript_model_onnx_refuses_runs_in_python_workers_and_the_log_says_why(built, torchscript):
    assert "cummax" in built.expected["torchscript"]["cummax"]["export"]
    assert built.expected["torchscript"]["mlp"]["export"] == "ok"
    lines = [line for line in torchscript.log if "TorchScript runs in Python workers" in line]
    assert any("cummax" in line and "aten::cummax" in line for line in lines), torchscript.text()
    assert not any("mlp" in line for line in lines), f"the exportable model is served natively:\n{lines}"


# --- 4. Unsafe archives ---------------------------------------------------------------------

MANIFEST = {"createdOn": "01/12/2026 00:00:00", "runtime": "python",
            "model": {"modelName": "evil", "serializedFile": "model.pt", "handler": "image_classifier",
                      "modelVersion": "1.0"},
            "archiverVersion": "0.12.0"}


def evil_mar(path, entry, data, external_attr=None):
    manifest = dict(MANIFEST, model=dict(MANIFEST["model"], modelName=path.stem))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        z.writestr("model.pt", b"not a model")
        info = zipfile.ZipInfo(entry)
        if external_attr is not None:
            info.external_attr = external_attr
        z.writestr(info, data)


@pytest.fixture(scope="module")
def guarded(built, home, torch_python, tmp_path_factory):
    """A server over a store with the good archives and two unsafe ones, nothing served at start;
    `.root` holds the store, the cache and nothing else."""
    root = tmp_path_factory.mktemp("guarded")
    store, cache = root / "store", root / "cache"
    store.mkdir()
    for name in ["my_fancy_model.mar", "squeezenet.mar"]:
        link_or_copy(built.out / "store" / name, store / name)
    evil_mar(store / "evil.mar", "../escape.txt", b"escaped")
    evil_mar(store / "symlink.mar", "weights-link.pt", b"/etc/passwd", external_attr=(0o120777 << 16))
    with serve_store(store, None, home, torch_python, cache) as s:
        s.root, s.store, s.cache = root, store, cache
        yield s


def test_unsafe_archives_are_refused_naming_the_entry_and_nothing_is_written_outside(built, guarded):
    for file, entry in [("evil.mar", "../escape.txt"), ("symlink.mar", "weights-link.pt")]:
        status, body = call_json(guarded.management, "POST", f"/models?url={file}")
        assert 400 <= status < 500, f"{file}: {status} {body}"
        assert entry in body["error"], f"{file}: {body}"
        # Nothing of it in the cache, nothing outside it.
        digest = hashlib.sha256((guarded.store / file).read_bytes()).hexdigest()
        # The session's temporary folder holds this test's store and cache, and the others'.
        for dirpath, _, filenames in os.walk(guarded.root.parent):
            assert "escape.txt" not in filenames, dirpath
        for dirpath, dirnames, filenames in os.walk(guarded.root):
            for n in dirnames + filenames:
                p = pathlib.Path(dirpath) / n
                assert not p.is_symlink(), p
                assert digest not in str(p), p
        assert not (pathlib.Path("/tmp") / "escape.txt").exists()
    status, body = call_json(guarded.management, "GET", "/models")
    assert status == 200 and "evil" not in json.dumps(body) and "symlink" not in json.dumps(body), body
    # The server lives on and serves a good archive registered after.
    status, body = call_json(guarded.management, "POST", "/models?url=squeezenet.mar&initial_workers=1")
    assert status == 200, body
    name = "tall.png"
    status, _, data = call(guarded.http, "POST", "/predictions/squeezenet", built.image(name),
                           {"Content-Type": "image/png"})
    assert status == 200, data[:300]
    check_classification(data, built.expected["classify"]["squeezenet"][name], "squeezenet after the refusals")


# --- 5. Archive formats ---------------------------------------------------------------------


def test_tgz_no_archive_and_eager_mode_serve_the_same_answers(built, home, torch_python, tmp_path_factory):
    """The same ResNet archived with --archive-format tgz (my_fancy_model.tar.gz, entries under
    my_fancy_model/), no-archive (a folder), and in eager mode (--model-file with a state dict,
    which runs TorchServe's own ImageClassifier in Python workers)."""
    formats = built.out / "formats"
    assert (formats / "my_fancy_model.tar.gz").is_file() and (formats / "my_fancy_model" / "MAR-INF").is_dir()
    with serve_store(formats, "tgz=my_fancy_model.tar.gz,folder=my_fancy_model,eager=eager.mar", home,
                     torch_python, tmp_path_factory.mktemp("cache")) as s:
        for model in ["tgz", "folder", "eager"]:
            for name, meta in built.images.items():
                status, _, data = call(s.http, "POST", f"/predictions/{model}", built.image(name),
                                       {"Content-Type": meta["content_type"]})
                assert status == 200, f"{model} {name}: {status} {data[:300]!r}"
                check_classification(data, built.expected["classify"]["my_fancy_model"][name], f"{model} {name}")


# --- 6. Registration through the management API ---------------------------------------------


def test_management_registers_a_mar_with_initial_workers_and_it_serves(built, guarded):
    status, body = call_json(guarded.management, "POST", "/models?url=my_fancy_model.mar&initial_workers=2")
    assert status == 200, body
    status, d = call_json(guarded.management, "GET", "/models/my_fancy_model")
    assert status == 200, d
    assert d["versions"][0]["replicas"] == 2, d
    classify_all(guarded.http, built, "/predictions/my_fancy_model", "my_fancy_model")


# --- 7. The torchserve command line ---------------------------------------------------------


def ts_config(path):
    ports = {"inference": free_port(), "management": free_port(), "metrics": free_port()}
    path.write_text("".join(f"{k}_address=http://127.0.0.1:{p}\n" for k, p in ports.items()))
    return {k: f"127.0.0.1:{p}" for k, p in ports.items()}


def check_torchserve(built, addr):
    status, body = call_json(addr["inference"], "GET", "/ping")
    assert status == 200 and body == {"status": "Healthy"}, body
    name = "wide.png"
    status, _, data = call(addr["inference"], "PUT", "/predictions/my_fancy_model", built.image(name))
    assert status == 200, data[:300]
    check_classification(data, built.expected["classify"]["my_fancy_model"][name], "torchserve")
    status, _, data = call(addr["management"], "GET", "/models")
    assert status == 200 and b"my_fancy_model" in data, data[:300]
    status, _, _ = call(addr["metrics"], "GET", "/metrics")
    assert status == 200


def torchserve_args(built, torch_python, config):
    return ["torchserve", "--start", "--ncs", "--model-store", str(built.out / "store"),
            "--models", "my_fancy_model=my_fancy_model.mar", "--ts-config", str(config), "--python", str(torch_python)]


def test_torchserve_foreground(built, home, torch_python, tmp_path):
    """`ferroserve torchserve --start --ncs ... --foreground` with TorchServe's config.properties."""
    config = tmp_path / "config.properties"
    addr = ts_config(config)
    with Server([*torchserve_args(built, torch_python, config), "--foreground"], env=home, python=None,
                listeners=set(), ready_path=f"http://{addr['inference']}/v2/health/ready"):
        check_torchserve(built, addr)


def processes_with(text):
    """PIDs of ferroserve processes whose command line holds `text`."""
    pids = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd and "ferroserve" in cmd:
                pids.append(int(d.name))
    return pids


def logs_under(folder):
    """The text of the *.log files under `folder` (where a background server may write)."""
    return "".join(f"--- {p}\n{p.read_text(errors='replace')[-5000:]}\n" for p in pathlib.Path(folder).rglob("*.log"))


def test_torchserve_in_the_background_and_stop(built, home, torch_python, tmp_path):
    """Without --foreground it returns once started and serves; `torchserve --stop` stops it (the
    pid file is under the module's private FERROSERVE_HOME)."""
    config = tmp_path / "config.properties"
    addr = ts_config(config)
    env = dict(os.environ, RUST_LOG="info", **home)
    # A store of its own, so that its path finds the background process if the test fails.
    store = tmp_path / "store"
    store.mkdir()
    link_or_copy(built.out / "store" / "my_fancy_model.mar", store / "my_fancy_model.mar")
    args = torchserve_args(built, torch_python, config)
    args[args.index("--model-store") + 1] = str(store)
    out, err = tmp_path / "start.out", tmp_path / "start.err"
    try:
        started = time.time()
        with open(out, "w") as o, open(err, "w") as e:
            r = subprocess.run([str(binary()), *args], stdout=o, stderr=e, env=env, timeout=60)
        assert r.returncode == 0, f"{out.read_text()}\n{err.read_text()}"
        assert time.time() - started < 30, "torchserve --start returns once the server is started"
        deadline = time.time() + 180
        while True:
            try:
                if call(addr["inference"], "GET", "/v2/health/ready", timeout=5)[0] == 200:
                    break
            except OSError:
                pass
            assert processes_with(str(store)), \
                f"the background server exited:\n{out.read_text()}\n{err.read_text()}\n{logs_under(home['FERROSERVE_HOME'])}"
            assert time.time() < deadline, \
                f"never ready:\n{out.read_text()}\n{err.read_text()}\n{logs_under(home['FERROSERVE_HOME'])}"
            time.sleep(0.2)
        check_torchserve(built, addr)
        r = subprocess.run([str(binary()), "torchserve", "--stop"], capture_output=True, text=True, env=env, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        deadline = time.time() + 30
        while True:
            try:
                call(addr["inference"], "GET", "/ping", timeout=2)
            except OSError:
                break
            assert time.time() < deadline, "torchserve --stop left the server answering"
            time.sleep(0.2)
        assert not processes_with(str(store)), "the server's process is still there"
    finally:
        for pid in processes_with(str(store)):
            try:
                os.kill(pid, 9)
            except OSError:
                pass
