#!/usr/bin/env python3
"""Soak test: the demo repository under a steady mix of every task at a fraction of its measured
capacity, for a given time. Reports errors by kind, latency per task and the server's resident
memory (from /proc/PID/status) after warm-up and at the end. Loopback only; stops by itself.

    scripts/soak.py [--minutes 10] [--load 0.8] [--measure 60]

Capacity is measured first: closed-loop clients send each kind alone as fast as the server
answers (`--measure` seconds in all), and the mix's capacity is the rate at which the kinds'
shares of the server's time add up to one. The soak then sends the mix open-loop at `--load`
times that rate, so queues stay short and every error is the server's. Needs only the standard library and a
release build (scripts/setup.sh).
"""

import argparse
import http.client
import json
import queue
import statistics
import sys
import threading
import time
import urllib.parse

from server import ROOT, Server

IMAGES = [(ROOT / "tests" / "fixtures" / "images" / f).read_bytes()
          for f in ["dog.jpg", "eagle.jpg", "horses.jpg", "person.jpg", "rocket.jpg"]]
SENTENCES = ["A man is eating food.", "A man is riding a horse.", "The new movie is awesome.",
             "A cat plays with a ball of wool.", "The stock market fell sharply today."]
ARTICLE = ("Men have landed and walked on the moon. The astronauts collected rocks and took "
           "photographs before returning to the lunar module. ")

# (name, weight, method, path, body, headers): one request of each kind, chosen by weight.
MIX = [
    ("image", 4, "PUT", "/predictions/efficientnet-lite0", IMAGES, {}),
    ("embed", 6, "POST", "/v1/embeddings",
     [json.dumps({"model": "minilm", "input": [s, s.upper()]}).encode() for s in SENTENCES],
     {"Content-Type": "application/json"}),
    ("v2", 6, "POST", "/v2/models/simple/infer",
     [json.dumps({"inputs": [
         {"name": "INPUT0", "shape": [1, 16], "datatype": "INT32", "data": list(range(16))},
         {"name": "INPUT1", "shape": [1, 16], "datatype": "INT32", "data": [i] * 16}]}).encode()
      for i in range(5)],
     {"Content-Type": "application/json"}),
    ("strings", 2, "POST", "/v2/models/string_identity/infer",
     [json.dumps({"inputs": [{"name": "TEXT", "shape": [2, 1], "datatype": "BYTES",
                              "data": [s, ""]}]}).encode() for s in SENTENCES],
     {"Content-Type": "application/json"}),
    ("summarize", 2, "GET", "/summarize?" + urllib.parse.urlencode({"txt": ARTICLE * 3}), [None], {}),
    ("imagine", 1, "GET", "/imagine?" + urllib.parse.urlencode(
        {"prompt": "a red apple on a table", "num_inference_steps": "4"}), [None], {}),
]
SCHEDULE = [kind for kind in MIX for _ in range(kind[1])]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency = {k[0]: [] for k in MIX}
        self.errors = {}
        # Requests the load generator could not send on time (all its workers waiting): its
        # limit, not the server's error.
        self.overruns = 0

    def ok(self, name, seconds):
        with self.lock:
            self.latency[name].append(seconds)

    def overrun(self):
        with self.lock:
            self.overruns += 1

    def error(self, what):
        with self.lock:
            self.errors[what] = self.errors.get(what, 0) + 1


def send(conn, kind, n):
    name, _, method, path, bodies, headers = kind
    body = bodies[n % len(bodies)]
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return name, r.status, data


def closed_loop_rate(server, kinds, seconds, clients):
    """Requests/s of `kinds` (round-robin) with `clients` closed-loop clients."""
    stop = threading.Event()
    done = [0] * clients

    def worker(i):
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        n = i
        while not stop.is_set():
            _, status, data = send(conn, kinds[n % len(kinds)], n)
            if status != 200:
                raise SystemExit(f"capacity run: HTTP {status} {data[:200]!r}")
            done[i] += 1
            n += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(1)
    before = sum(done)
    start = time.perf_counter()
    time.sleep(seconds)
    rate = (sum(done) - before) / (time.perf_counter() - start)
    stop.set()
    for t in threads:
        t.join()
    return rate


def capacity(server, seconds, clients):
    """Requests/s of the mix. Each kind's rate is measured alone; the kinds share the same CPUs,
    so the mix's rate is the one at which their shares of the time add up to one. (A closed
    loop over the mix overstates it: clients stuck on slow requests starve the fast ones.)"""
    total = sum(k[1] for k in MIX)
    alone = {k[0]: closed_loop_rate(server, [k], seconds / len(MIX), clients) for k in MIX}
    mix = 1.0 / sum((k[1] / total) / alone[k[0]] for k in MIX)
    return mix, alone


def soak(server, rate, seconds, stats, workers=256):
    """Sends the mix open-loop at `rate` requests/s for `seconds`; a request the workers cannot
    take at its time counts as the client's overrun, not the server's error."""
    jobs = queue.Queue(maxsize=workers)
    stop = threading.Event()

    def worker():
        conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
        while True:
            job = jobs.get()
            if job is None:
                return
            n = job
            kind = SCHEDULE[n % len(SCHEDULE)]
            started = time.perf_counter()
            try:
                name, status, data = send(conn, kind, n)
            except (OSError, http.client.HTTPException) as e:
                stats.error(f"{kind[0]}: {type(e).__name__}")
                conn.close()
                conn = http.client.HTTPConnection(server.host, server.port, timeout=120)
                continue
            if status == 200:
                stats.ok(name, time.perf_counter() - started)
            else:
                stats.error(f"{name}: HTTP {status} {data[:80]!r}")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(workers)]
    for t in threads:
        t.start()
    interval = 1.0 / rate
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < seconds and not stop.is_set():
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        try:
            jobs.put_nowait(n)
        except queue.Full:
            stats.overrun()
        n += 1
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    return n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--load", type=float, default=0.8, help="fraction of the measured capacity")
    ap.add_argument("--measure", type=float, default=60.0, help="seconds of capacity measurement, all kinds together")
    ap.add_argument("--clients", type=int, default=16, help="closed-loop clients when measuring")
    args = ap.parse_args()
    server = Server({}, whole=["efficientnet-lite0", "minilm", "simple", "string_identity",
                               "summarize", "imagine"])
    try:
        full, alone = capacity(server, args.measure, args.clients)
        rate = full * args.load
        print(f"capacity alone: {', '.join(f'{k} {v:.1f}/s' for k, v in alone.items())}; "
              f"of the mix: {full:.1f} requests/s; soaking at {rate:.1f} requests/s "
              f"({args.load:.0%}) for {args.minutes:g} min", file=sys.stderr)
        # Warm-up at the soak's rate, then the memory baseline.
        soak(server, rate, 30, Stats())
        rss_start = server.rss_kib()
        stats = Stats()
        samples = []
        seconds = args.minutes * 60
        watcher_stop = threading.Event()

        def watch():
            while not watcher_stop.wait(10):
                samples.append(server.rss_kib())

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sent = soak(server, rate, seconds, stats)
        watcher_stop.set()
        watcher.join()
        rss_end = server.rss_kib()
        answered = sum(len(v) for v in stats.latency.values())
        errors = sum(stats.errors.values())
        result = {
            "capacity_rps": round(full, 1),
            "capacity_alone_rps": {k: round(v, 1) for k, v in alone.items()},
            "load": args.load,
            "rate_rps": round(rate, 1),
            "minutes": args.minutes,
            "sent": sent,
            "answered": answered,
            "errors": errors,
            "errors_by_kind": stats.errors,
            "client_overruns": stats.overruns,
            "rss_mib_after_warmup": round(rss_start / 1024, 1),
            "rss_mib_end": round(rss_end / 1024, 1),
            "rss_mib_min": round(min(samples + [rss_end]) / 1024, 1),
            "rss_mib_max": round(max(samples + [rss_end]) / 1024, 1),
            "rss_change": round(rss_end / rss_start - 1, 3),
            "server_warnings": len(server.warnings),
            "latency_ms": {
                name: {"n": len(v),
                       "p50": round(1000 * statistics.median(v), 1) if v else None,
                       "p99": round(1000 * sorted(v)[min(len(v) - 1, int(len(v) * 0.99))], 1) if v else None}
                for name, v in stats.latency.items()
            },
        }
        print(json.dumps(result, indent=2))
        if server.warnings:
            print("server warnings:\n" + "\n".join(server.warnings[:20]), file=sys.stderr)
    finally:
        server.stop()
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
