"""Serving overhead: ferroserve over HTTP vs. the same model in-process in onnxruntime (Python).

Both sides run the same ONNX file on the same inputs in one run, alternating in short slices, so
the ratio holds on a shared machine where absolute numbers drift. The HTTP client is a bare
keep-alive `http.client` connection sending Triton's binary tensor format, to keep client-side
cost small. Sequential requests (concurrency 1): this measures per-request latency; throughput
under load is `ferroserve bench` (issue 3).

Usage: .venv/bin/python scripts/bench.py [--seconds 5]   (scripts/bench.sh sets it up)
"""
import argparse
import http.client
import json
import os
import pathlib
import re
import statistics
import subprocess
import tempfile
import threading
import time

import numpy as np
import onnxruntime as ort

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "models"
DTYPE = {np.float32: "FP32", np.int64: "INT64", np.int32: "INT32"}


def workloads():
    rng = np.random.default_rng(0)
    seq = 16
    ids = rng.integers(1000, 5000, size=(1, seq)).astype(np.int64)
    return [
        ("identity FP32 [1,16]", "identity", {"INPUT0": rng.standard_normal((1, 16)).astype(np.float32)}),
        ("simple INT32 [1,16]x2", "simple", {
            "INPUT0": np.arange(16, dtype=np.int32).reshape(1, 16),
            "INPUT1": np.ones((1, 16), dtype=np.int32)}),
        ("MiniLM int8, 16 tokens", "minilm", {
            "input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}),
        ("EfficientNet-Lite0 [1,3,224,224]", "efficientnet-lite0", {
            "input": rng.standard_normal((1, 3, 224, 224)).astype(np.float32)}),
    ]


def start_server(binary, repo):
    proc = subprocess.Popen([binary, "serve", "--http-port", "0", "--model-repository", repo],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    addr = {}
    ev = threading.Event()

    def drain():
        for line in proc.stderr:
            m = re.search(r"listening on http://([0-9.]+):([0-9]+)", line)
            if m:
                addr["host"], addr["port"] = m.group(1), int(m.group(2))
                ev.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ev.wait(30):
        proc.kill()
        raise SystemExit("ferroserve did not start")
    conn = http.client.HTTPConnection(addr["host"], addr["port"])
    for _ in range(2400):
        conn.request("GET", "/v2/health/ready")
        r = conn.getresponse()
        r.read()
        if r.status == 200:
            return proc, conn
        time.sleep(0.05)
    raise SystemExit("ferroserve never became ready")


def binary_request(inputs):
    blobs = [np.ascontiguousarray(v).tobytes() for v in inputs.values()]
    header = json.dumps({
        "inputs": [{"name": k, "shape": list(v.shape), "datatype": DTYPE[v.dtype.type],
                    "parameters": {"binary_data_size": len(b)}} for (k, v), b in zip(inputs.items(), blobs)],
        "parameters": {"binary_data_output": True},
    }).encode()
    return header + b"".join(blobs), len(header)


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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--binary", default=str(pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "ferroserve"))
    args = ap.parse_args()

    repo = tempfile.TemporaryDirectory()
    for name in ["identity", "simple", "minilm", "efficientnet-lite0"]:
        os.symlink(MODELS / name, pathlib.Path(repo.name) / name)
    proc, conn = start_server(args.binary, repo.name)
    try:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        print(f"onnxruntime {ort.__version__} in-process vs ferroserve over HTTP (binary tensors), "
              f"sequential, {args.seconds:.0f} s per cell, {os.cpu_count()} cores\n")
        print("| workload | in-process p50 | ferroserve p50 | ratio | overhead p50 | ferroserve p99 |")
        print("| --- | --- | --- | --- | --- | --- |")
        for label, model, inputs in workloads():
            sess = ort.InferenceSession(str(MODELS / model / "1" / "model.onnx"), opts,
                                        providers=["CPUExecutionProvider"])
            body, hlen = binary_request(inputs)
            path = f"/v2/models/{model}/infer"
            headers = {"Inference-Header-Content-Length": str(hlen), "Content-Type": "application/octet-stream"}

            def over_http():
                conn.request("POST", path, body=body, headers=headers)
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    raise SystemExit(f"{model}: HTTP {r.status}")

            local, remote = timed_pair(lambda: sess.run(None, inputs), over_http, args.seconds)
            lp, rp = statistics.median(local), statistics.median(remote)
            p99 = sorted(remote)[int(len(remote) * 0.99) - 1]
            print(f"| {label} | {lp * 1e3:.3f} ms | {rp * 1e3:.3f} ms | {rp / lp:.2f}x | "
                  f"{(rp - lp) * 1e6:.0f} µs | {p99 * 1e3:.3f} ms |")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
