"""BENCHMARKS table 10: the Ray Serve summarizer tutorial's application
(tests/fixtures/ray/summarizer.py, a T5 summarization pipeline behind a class deployment that
reads `request.query_params["txt"]`) under `ferroserve run` and under Ray Serve 2.60 itself, on
the same machine in the same run: requests/s and p50/p99 latency at concurrency 8 (wrk), and
the idle memory (PSS) of each server's whole process tree after warm-up.

Both run the same file with the same interpreter's packages (PyTorch 2.15, transformers 5.23:
tests/python/torch_env.py's serve environment); Ray Serve runs from a virtual environment
layered on it that adds `ray[serve]` (made under ~/.cache/ferroserve when missing). Each server
serves one replica with Ray's default max_ongoing_requests (5); Ray is started as `serve run`
would start it on one machine (a local cluster with the machine's CPUs, no dashboard), bound to
127.0.0.1. The servers run one after the other (Ray's background processes would otherwise
take CPU from ferroserve's rounds), each for ROUNDS rounds; the median is reported. Every
answer is checked to be the same summary on both.
"""
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse

from bench_python import free_port
from bench_torchserve import cmdline, idle_memory, kill_leftovers, request, seconds_of, tree
from server import BIN

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "python"))
import torch_env  # noqa: E402

APP_DIR = ROOT / "tests" / "fixtures" / "ray"
RAY = ["ray[serve]==2.60.0"]
CONCURRENCY = 8
ROUNDS = 2
TEXT = ("The tower is 324 metres tall, about the same height as an 81-storey building, and the tallest structure "
        "in Paris. Its base is square, measuring 125 metres on each side.")
PATH = "/?" + urllib.parse.urlencode({"txt": TEXT})

RAY_DRIVER = r'''
import sys, time
import ray
from ray import serve
port = int(sys.argv[1])
ray.init(include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
serve.start(http_options={"host": "127.0.0.1", "port": port})
import summarizer
serve.run(summarizer.summarizer_app, route_prefix="/")
print("READY", flush=True)
while True:
    time.sleep(3600)
'''


# The application alone, in-process: its class built and called once, then its memory (the
# floor any server of this file has: PyTorch's CUDA build maps and initialises its libraries at
# import, about half a GiB before a model loads).
IN_PROCESS = r'''
import re, sys
sys.path.insert(0, sys.argv[1])
import summarizer
s = summarizer.Summarizer.func_or_class()
s.summarize(sys.argv[2])
t = open("/proc/self/smaps_rollup").read()
print(int(re.search(r"^Pss:\s+(\d+)", t, re.M).group(1)))
'''


def get(port, path):
    return request("127.0.0.1", port, "GET", path, timeout=300)


class Server:
    """A server process started by this script, stopped by its PID (and the processes it started,
    recorded while it ran)."""

    def __init__(self, name, argv, env, ready, port=None):
        self.name, self.port, self.log = name, port, []
        self.proc = subprocess.Popen(argv, env=env, cwd=str(APP_DIR), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        found = threading.Event()

        def drain():
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                m = re.search(r"HTTP listening on http://[0-9.]+:([0-9]+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                if re.search(ready, line):
                    found.set()

        self.recorded = {}
        threading.Thread(target=drain, daemon=True).start()
        deadline = time.time() + 600
        while not found.is_set():
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise SystemExit(f"{name} did not start:\n" + "\n".join(self.log[-40:]))
            time.sleep(0.2)

    def record(self):
        self.recorded.update({p: cmdline(p) for p in tree(self.proc.pid)[1:]})

    def stop(self):
        if self.proc.poll() is None:
            self.record()
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        time.sleep(1)
        kill_leftovers(self.recorded)


def wrk(port, seconds):
    """wrk -t2 -c8 -> (requests/s, p50 s, p99 s)."""
    out = subprocess.run(["wrk", "-t2", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
                          "--latency", f"http://127.0.0.1:{port}{PATH}"], check=True, capture_output=True,
                         text=True).stdout
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise SystemExit(f"wrk: errors\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = seconds_of(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = seconds_of(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return rps, p50, p99


def measure(server, seconds, expected):
    status, body = get(server.port, PATH)
    if status != 200:
        raise SystemExit(f"{server.name}: {status} {body[:300]!r}")
    if expected is not None and body != expected:
        raise SystemExit(f"{server.name} answers {body!r}, the other server {expected!r}")
    for _ in range(3 * CONCURRENCY):
        get(server.port, PATH)
    server.record()
    rss, pss, n = idle_memory(server.proc.pid)
    rounds = []
    for _ in range(ROUNDS):
        rounds.append(wrk(server.port, seconds))
        # One answer after the round: the backlog wrk left is done before the next round.
        get(server.port, PATH)
    server.record()
    rps = statistics.median(r[0] for r in rounds)
    p50 = statistics.median(r[1] for r in rounds)
    p99 = statistics.median(r[2] for r in rounds)
    return {"rps": rps, "p50_ms": p50 * 1e3, "p99_ms": p99 * 1e3, "pss_mib": pss / 1024, "rss_mib": rss / 1024,
            "processes": n, "answer": body.decode()}


def run(seconds):
    if not (BIN.exists() and subprocess.run(["which", "wrk"], capture_output=True).returncode == 0):
        raise SystemExit("needs the release binary and wrk (scripts/bench.sh installs wrk)")
    serve_python = torch_env.serve_python()
    ray_python = torch_env.layered(serve_python, RAY)
    env = dict(os.environ, PYTHONPATH=str(APP_DIR))
    results = {}
    fs = Server("ferroserve", [str(BIN), "run", "summarizer:summarizer_app", "--port", "0",
                               "--python", str(serve_python)], env, r"server ready")
    try:
        results["ferroserve"] = measure(fs, seconds, None)
    finally:
        fs.stop()
    port = free_port()
    ray = Server("Ray Serve", [str(ray_python), "-c", RAY_DRIVER, str(port)], env, r"^READY$", port=port)
    try:
        results["ray"] = measure(ray, seconds, results["ferroserve"]["answer"].encode())
    finally:
        ray.stop()
    shim = ROOT / "crates" / "backends" / "python" / "python" / "shim_ray"
    alone = subprocess.run([str(serve_python), "-c", IN_PROCESS, str(shim), TEXT], env=env, cwd=str(APP_DIR),
                           check=True, capture_output=True, text=True).stdout.split()[-1]
    alone_mib = int(alone) / 1024
    f, r = results["ferroserve"], results["ray"]
    print(f"\n10. Ray Serve's summarizer tutorial, concurrency {CONCURRENCY}, {seconds:.0f} s x {ROUNDS} rounds")
    print("| server | requests/s | p50 | p99 | idle PSS (processes) |")
    print("| --- | --- | --- | --- | --- |")
    for name, x in (("Ray Serve 2.60 (`serve.run`)", r), ("`ferroserve run summarizer:summarizer_app`", f)):
        print(f"| {name} | {x['rps']:.1f} | {x['p50_ms']:.1f} ms | {x['p99_ms']:.1f} ms | "
              f"{x['pss_mib']:.0f} MiB ({x['processes']}) |")
    print(f"| the application in-process (class built, called once) | | | | {alone_mib:.0f} MiB (1) |")
    print(f"throughput ratio {f['rps'] / r['rps']:.2f}x, memory ratio {f['pss_mib'] / r['pss_mib']:.2f}; "
          f"beyond the application in-process: ferroserve {f['pss_mib'] - alone_mib:.0f} MiB, "
          f"Ray Serve {r['pss_mib'] - alone_mib:.0f} MiB")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != 'answer'} for k, v in results.items()}))


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=12)
    run(ap.parse_args().seconds)
