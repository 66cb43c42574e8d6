"""Table 9 of BENCHMARKS.md: a TorchServe .mar served by ferroserve beside TorchServe itself.
Called by bench.py (`--only torchserve`); every figure is a ratio of measurements taken in this
one run, on this machine.

TorchServe's getting-started model: torchvision's ResNet-18 (torch.manual_seed(0), no downloaded
weights), torch.jit.script'ed and archived by the real torch-model-archiver with
`--handler image_classifier` and an index_to_name.json, as my_fancy_model.mar. One photo-like
640x480 JPEG (drawn here with PIL) is sent as `PUT /predictions/my_fancy_model` (what `curl -T`
sends) by wrk at concurrency 16 to three servers of the same file, in alternating rounds:
TorchServe 0.12.0 with its defaults (on a CPU: one worker per core, each with torch's default
threads, one per core), TorchServe with OMP_NUM_THREADS=1 in its workers (its performance
guide's remedy for that oversubscription), and ferroserve with its defaults (`serve
--model-store --models my_fancy_model=my_fancy_model.mar`: the TorchScript exported to ONNX at
load, ONNX Runtime, no Python per request). After each round one more request waits out what wrk
left queued, so that no server works during another's round. Reported: images/s, p50/p99
latency, and the memory of each server's whole process tree (TorchServe: the Java frontend and
its Python workers; ferroserve: its process and any children), idle after the model loaded and a
warm-up. Every server's top 5 for the image is checked against TorchServe's image_classifier run
in-process, before the rounds and after each.

TorchServe's vision handlers import captum at module level and `pip install torchserve` does not
bring it, so TorchServe runs from a small virtual environment layered on the torch one
(tests/python/torch_env.py's, shared): that venv's site-packages through a .pth file, plus
captum from PyPI. Both live under ~/.cache/ferroserve, keyed by a hash of their requirements,
and are created when missing. TorchServe needs Java 17 (`java` on PATH or JAVA_HOME).
"""
import http.client
import json
import os
import pathlib
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from bench_python import free_port, venv

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests" / "python"))
import torch_env  # noqa: E402  (shared with the tests: one way to layer a venv)
from server import BIN

# tests/python/torch_env.py's list, in its order: the same key, so the same venv.
TORCH_REQUIREMENTS = ["torch==2.15.0", "torchvision==0.29.2", "torchserve==0.12.0", "torch-model-archiver==0.12.0",
                      "pillow==13.0.0", "numpy==2.4.6", "onnx==1.23.2", "pyyaml==6.0.4"]
# What TorchServe's image_classifier imports beyond `pip install torchserve` (captum 0.9.0 needs
# torch>=2.3, numpy, matplotlib, packaging, tqdm).
TORCHSERVE_EXTRA = ["captum==0.9.0"]
MODEL = "my_fancy_model"
CONCURRENCY = 16
ROUNDS = 3
# The image is drawn from the first seed for which every top-6 probability of the (randomly
# initialised, so nearly flat) network differs from the next by this much: the order of the
# top 5 must not hinge on how a server decodes and resizes.
MIN_GAP = 1.5e-4
# ferroserve decodes and resizes natively, TorchServe with PIL.
PROB_TOLERANCE = 1e-3

BUILD = r'''
import io, json, pathlib, subprocess, sys, warnings
warnings.filterwarnings("ignore")
import numpy as np, torch, torchvision
from PIL import Image, ImageDraw, ImageFilter
# TorchServe's own preprocessing (and the reason for captum: it imports it).
from ts.torch_handler.image_classifier import ImageClassifier

out, archiver, name, min_gap = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
W, H = 640, 480


def photo(seed):
    """A photo-like JPEG: smooth colour fields, soft-edged shapes, texture and sensor grain."""
    rng = np.random.default_rng(seed)
    def field(h, w, amp):
        small = Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8), "RGB")
        return (np.asarray(small.resize((W, H), Image.BICUBIC), np.float32) - 127.5) * amp
    sky = np.linspace(1.0, 0.55, H, dtype=np.float32)[:, None, None]
    base = np.clip(150 * sky + field(4, 5, 0.8), 0, 255)
    im = Image.fromarray(base.astype(np.uint8), "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(5, 10))):
        colour = tuple(int(v) for v in rng.integers(20, 236, 3))
        x0, y0 = int(rng.integers(-80, W - 40)), int(rng.integers(H // 4, H - 40))
        x1, y1 = x0 + int(rng.integers(60, 300)), y0 + int(rng.integers(40, 220))
        if rng.random() < 0.5:
            d.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            d.polygon([(x0, y1), ((x0 + x1) // 2 + int(rng.integers(-40, 40)), y0), (x1, y1)], fill=colour)
    im = im.filter(ImageFilter.GaussianBlur(2.0))
    pixels = np.asarray(im, np.float32) + field(60, 80, 0.15) + rng.normal(0, 5, (H, W, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB").save(buf, "JPEG", quality=90)
    return buf.getvalue()


torch.manual_seed(0)
net = torchvision.models.resnet18(weights=None).eval()
for seed in range(500):
    jpeg = photo(seed)
    x = ImageClassifier.image_processing(Image.open(io.BytesIO(jpeg)))[None]
    with torch.inference_mode():
        top = net(x).softmax(1).topk(6, 1)
    probs = top.values[0]
    gap = (probs[:5] - probs[1:]).min().item()
    if gap >= min_gap:
        break
else:
    raise SystemExit(f"no image seed gives top-6 gaps of {min_gap}")
(out / "image.jpg").write_bytes(jpeg)

# Unique names (torchvision's list has two "crane"s and two "maillot"s; an answer's keys are names).
names, seen = [], set()
for i, label in enumerate(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.meta["categories"]):
    label = f"{label} ({i})" if label in seen else label
    seen.add(label)
    names.append(label)
work = out / "work"
work.mkdir()
(out / "store").mkdir()
torch.jit.script(net).save(str(work / "resnet18.pt"))
(work / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(names)}))
subprocess.run([archiver, "--model-name", name, "--version", "1.0", "--serialized-file", str(work / "resnet18.pt"),
                "--handler", "image_classifier", "--extra-files", str(work / "index_to_name.json"),
                "--export-path", str(out / "store")], check=True)
expected = [[names[c], p] for c, p in zip(top.indices[0, :5].tolist(), probs[:5].tolist())]
print(json.dumps({"seed": seed, "gap": gap, "expected": expected, "torch": torch.__version__,
                  "threads": torch.get_num_threads()}))
'''


# --- processes ------------------------------------------------------------------------------


def children_map():
    kids = {}
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(d.name))
    return kids


def tree(pid):
    """pid and its descendants."""
    kids, out, todo = children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def memory_kib(pid):
    """(RSS, PSS, process count) of pid's process tree, in KiB, from /proc."""
    rss = pss = n = 0
    for p in tree(pid):
        try:
            status = pathlib.Path(f"/proc/{p}/status").read_text()
            rollup = pathlib.Path(f"/proc/{p}/smaps_rollup").read_text()
        except OSError:
            continue
        rss += int(re.search(r"^VmRSS:\s+(\d+)", status, re.M).group(1))
        pss += int(re.search(r"^Pss:\s+(\d+)", rollup, re.M).group(1))
        n += 1
    return rss, pss, n


def idle_memory(pid, samples=5):
    """Median of a few samples, half a second apart (TorchServe's frontend starts a short-lived
    Python metrics collector every minute)."""
    got = []
    for _ in range(samples):
        got.append(memory_kib(pid))
        time.sleep(0.5)
    return tuple(statistics.median(g[i] for g in got) for i in range(3))


def cmdline(pid):
    try:
        return pathlib.Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None


def kill_leftovers(recorded):
    """SIGKILL the recorded {pid: cmdline} processes that still run the same command."""
    for pid, cmd in recorded.items():
        if cmd is not None and cmdline(pid) == cmd:
            os.kill(pid, signal.SIGKILL)


def request(host, port, method, path, body=None, headers=None, timeout=60):
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


class Ferroserve:
    """`ferroserve serve --model-store STORE --models NAME=NAME.mar` on ephemeral ports, with its
    defaults; stopped by its PID."""

    def __init__(self, store, python):
        self.cache = tempfile.TemporaryDirectory()
        self.proc = subprocess.Popen(
            [str(BIN), "serve", "--http-port", "0", "--grpc-port", "0", "--management-port", "0",
             "--model-store", str(store), "--store-cache", self.cache.name, "--models", f"{MODEL}={MODEL}.mar",
             "--python", str(python)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.log, found = [], threading.Event()

        def drain():
            for line in self.proc.stderr:
                self.log.append(line.rstrip())
                m = re.search(r"HTTP listening on http://([0-9.]+):([0-9]+)", line)
                if m and not found.is_set():
                    self.host, self.port = m.group(1), int(m.group(2))
                    found.set()

        threading.Thread(target=drain, daemon=True).start()
        if not found.wait(60):
            self.stop()
            raise SystemExit("ferroserve did not start:\n" + "\n".join(self.log[-30:]))
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit("ferroserve exited:\n" + "\n".join(self.log[-30:]))
            if request(self.host, self.port, "GET", f"/v2/models/{MODEL}/ready")[0] == 200:
                self.pid = self.proc.pid
                ready = next((line for line in self.log if "model ready" in line), "")
                self.layout = ", ".join(re.findall(r"(replicas=\d+|max_batch_size=\d+)", ready))
                return
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"ferroserve never had {MODEL} ready:\n" + "\n".join(self.log[-30:]))

    def stop(self):
        recorded = {p: cmdline(p) for p in tree(self.proc.pid)[1:]}
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_leftovers(recorded)
        self.cache.cleanup()


class TorchServe:
    """TorchServe 0.12 from `python` (the captum venv, which sees the torch venv): `torchserve
    --start --ncs --foreground` with a config.properties of loopback ports, its logs, pid file and
    temporary files in a folder of its own, `env` added to its environment (which its workers
    inherit); stopped with `torchserve --stop` and by the PIDs it started. Everything else is
    TorchServe's default (workers: one per core on a CPU, batch size 1)."""

    def __init__(self, store, python, env=None):
        self.dir = tempfile.TemporaryDirectory()
        d = pathlib.Path(self.dir.name)
        self.port = free_port()
        self.management = free_port()
        config = d / "config.properties"
        config.write_text(
            f"inference_address=http://127.0.0.1:{self.port}\n"
            f"management_address=http://127.0.0.1:{self.management}\n"
            f"metrics_address=http://127.0.0.1:{free_port()}\n"
            f"grpc_inference_port={free_port()}\n"
            f"grpc_management_port={free_port()}\n")
        # TMPDIR: where the launcher keeps its pid file (so --stop stops this one); TEMP: the
        # frontend's java.io.tmpdir (unpacked archives); LOG_LOCATION / METRICS_LOCATION: logs.
        # (A thread count set in this shell would make the defaults row something else.)
        inherited = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        self.env = dict(inherited, PATH=f"{python.parent}:{os.environ['PATH']}", TMPDIR=str(d), TEMP=str(d),
                        LOG_LOCATION=str(d / "logs"), METRICS_LOCATION=str(d / "logs"), **(env or {}))
        self.python = python
        self.host = "127.0.0.1"
        self.out = open(d / "torchserve.out", "w")
        self.proc = subprocess.Popen(
            [str(python), "-m", "ts.model_server", "--start", "--ncs", "--foreground", "--model-store", str(store),
             "--models", f"{MODEL}={MODEL}.mar", "--ts-config", str(config), "--disable-token-auth",
             "--enable-model-api"],
            stdout=self.out, stderr=subprocess.STDOUT, env=self.env, cwd=d)
        self.pid = None
        deadline = time.time() + 600
        while time.time() < deadline:
            if self.proc.poll() is not None:
                self.stop()
                raise SystemExit("TorchServe exited:\n" + self.logs())
            if self.pid is None:
                self.pid = next((p for p in tree(self.proc.pid)[1:]
                                 if b"org.pytorch.serve.ModelServer" in (cmdline(p) or b"")), None)
            try:
                status, body = request(self.host, self.management, "GET", f"/models/{MODEL}", timeout=5)
            except OSError:
                status = None
            if status == 200:
                workers = json.loads(body)[0]["workers"]
                if workers and all(w["status"] == "READY" for w in workers):
                    self.workers = len(workers)
                    return
            time.sleep(0.5)
        self.stop()
        raise SystemExit(f"TorchServe never had {MODEL}'s workers ready:\n" + self.logs())

    def logs(self, lines=40):
        d = pathlib.Path(self.dir.name)
        out = []
        for f in [d / "torchserve.out", d / "logs" / "model_log.log", d / "logs" / "ts_log.log"]:
            if f.exists():
                out.append(f"--- {f.name}\n" + "\n".join(f.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)

    def stop(self):
        recorded = {p: cmdline(p) for p in tree(self.proc.pid)[1:]}
        subprocess.run([str(self.python), "-m", "ts.model_server", "--stop"], env=self.env, cwd=self.dir.name,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        kill_leftovers(recorded)
        self.out.close()
        self.dir.cleanup()


# --- load -----------------------------------------------------------------------------------


def seconds_of(text):
    value, unit = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text).groups()
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}[unit]


def wrk_put(url, script, seconds):
    """wrk -t1 -c16 sending the JPEG -> (requests/s, p50 s, p99 s, wrk's CPU in cores)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    out = subprocess.run(["wrk", "-t1", f"-c{CONCURRENCY}", f"-d{max(1, round(seconds))}s", "--timeout", "60s",
                          "--latency", "-s", script, url], check=True, capture_output=True, text=True).stdout
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime) / wall
    if re.search(r"Non-2xx or 3xx responses|Socket errors", out):
        raise SystemExit(f"wrk {url}: errors\n{out}")
    if re.search(r"^\s+0 requests in", out, re.M):
        raise SystemExit(f"wrk {url}: no answer within the round ({seconds:.0f} s); give more --seconds\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50 = seconds_of(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1))
    p99 = seconds_of(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1))
    return rps, p50, p99, cpu


def top5(server, jpeg, who):
    status, body = request(server.host, server.port, "PUT", f"/predictions/{MODEL}", jpeg)
    if status != 200:
        raise SystemExit(f"{who}: PUT /predictions/{MODEL}: {status} {body[:300]!r}")
    answer = json.loads(body, object_pairs_hook=list)
    if not isinstance(answer, list) or len(answer) != 5:
        raise SystemExit(f"{who}: not a top-5 object: {body[:300]!r}")
    return answer


def warm_up(server, jpeg, per_client=4):
    """CONCURRENCY clients x per_client requests, counted rather than timed: TorchScript's
    profiling executor makes each TorchServe worker's first runs slow (about a second each)."""
    errors = []

    def client():
        conn = http.client.HTTPConnection(server.host, server.port, timeout=300)
        for _ in range(per_client):
            conn.request("PUT", f"/predictions/{MODEL}", body=jpeg)
            r = conn.getresponse()
            body = r.read()
            if r.status != 200:
                errors.append(f"{r.status} {body[:200]!r}")
        conn.close()

    threads = [threading.Thread(target=client) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"warm-up of {type(server).__name__}: {errors[0]} ({len(errors)} errors)")


def drain(server, jpeg, expected, who):
    """One request after a round: wrk leaves up to CONCURRENCY requests in the server's queue when
    it stops, and the queue is first come first served, so its answer means that backlog is done
    (and does not run during the next server's round). The answer is checked again."""
    check_answers({who: top5(server, jpeg, who)}, expected)


def check_answers(answers, expected):
    """Every server's labels, in order, equal TorchServe's in-process ones; returns the largest
    probability difference to them."""
    want = [label for label, _ in expected]
    worst = 0.0
    for who, answer in answers.items():
        got = [label for label, _ in answer]
        if got != want:
            raise SystemExit(f"{who} answers top 5 {got}, TorchServe's image_classifier in-process {want}:\n"
                             + json.dumps(answers, indent=1))
        for (label, p), (_, q) in zip(answer, expected):
            worst = max(worst, abs(p - q))
            if abs(p - q) > PROB_TOLERANCE:
                raise SystemExit(f"{who}: {label} {p}, in-process {q}")
    return worst


def java_version():
    java = pathlib.Path(os.environ["JAVA_HOME"], "bin", "java") if os.environ.get("JAVA_HOME") else shutil.which("java")
    if not java or not pathlib.Path(java).exists():
        raise SystemExit("table 9 needs Java 17 for TorchServe 0.12, and `java` is not on PATH (nor JAVA_HOME set): "
                         "apt-get install openjdk-17-jre-headless")
    out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
    return re.search(r'version "([^"]+)"', out).group(1)


ROWS = {
    "torchserve": "TorchServe 0.12.0, defaults",
    "torchserve-1": "TorchServe 0.12.0, OMP_NUM_THREADS=1",
    "ferroserve": "ferroserve, defaults (TorchScript exported to ONNX at load, ONNX Runtime)",
}


def run(seconds, rounds=ROUNDS):
    if not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (scripts/bench.sh installs it)")
    java = java_version()
    torch_python = venv(TORCH_REQUIREMENTS)
    ts_python = torch_env.layered(torch_python, TORCHSERVE_EXTRA)
    work = tempfile.TemporaryDirectory()
    out = pathlib.Path(work.name)
    made = subprocess.run([str(ts_python), "-c", BUILD, str(out), str(torch_python.parent / "torch-model-archiver"),
                           MODEL, str(MIN_GAP)], capture_output=True, text=True)
    if made.returncode != 0:
        raise SystemExit(f"making {MODEL}.mar and the image failed:\n{made.stdout}\n{made.stderr}")
    built = json.loads(made.stdout.strip().splitlines()[-1])
    expected = built["expected"]
    jpeg = (out / "image.jpg").read_bytes()
    script = out / "put.lua"
    script.write_text(f'wrk.method = "PUT"\nlocal f = assert(io.open({json.dumps(str(out / "image.jpg"))}, "rb"))\n'
                      'wrk.body = f:read("*a")\nf:close()\n')
    servers = {}
    rates = {who: [] for who in ROWS}
    try:
        servers["torchserve"] = TorchServe(out / "store", ts_python)
        # TorchServe's default gives each of its one-per-core workers torch's default intra-op
        # threads (one per core too); its performance guide's remedy is one thread per worker.
        servers["torchserve-1"] = TorchServe(out / "store", ts_python, {"OMP_NUM_THREADS": "1"})
        servers["ferroserve"] = Ferroserve(out / "store", torch_python)
        answers = {who: top5(s, jpeg, who) for who, s in servers.items()}
        worst = check_answers(answers, expected)
        urls = {who: f"http://{s.host}:{s.port}/predictions/{MODEL}" for who, s in servers.items()}
        for s in servers.values():
            warm_up(s, jpeg)
        time.sleep(2)
        memory = {who: idle_memory(s.pid) for who, s in servers.items()}
        order = list(ROWS)
        for r in range(rounds):
            for who in order[r % len(order):] + order[:r % len(order)]:
                rates[who].append(wrk_put(urls[who], str(script), seconds))
                drain(servers[who], jpeg, expected, who)
        workers = servers["torchserve"].workers
        layout = servers["ferroserve"].layout
    finally:
        for s in servers.values():
            s.stop()
        work.cleanup()

    def med(who, i):
        return statistics.median(x[i] for x in rates[who])

    base, base_mem = med("torchserve", 0), memory["torchserve"][0]
    mib = lambda kib: f"{kib / 1024:,.0f} MiB"
    print(f"### 9. TorchServe's .mar: ResNet-18, JPEG in, labels out, concurrency {CONCURRENCY} "
          f"(wrk, {seconds:.0f} s x {rounds} alternating rounds, median)\n")
    print("| server | images/s | ratio | p50 | p99 | idle memory (RSS, process tree) | ratio | PSS | processes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for who, label in ROWS.items():
        rss, pss, n = memory[who]
        bold = (lambda x: f"**{x}**") if who == "ferroserve" else (lambda x: x)
        print(f"| {label} | {med(who, 0):,.1f} | {bold(f'{med(who, 0) / base:.2f}')} | {med(who, 1) * 1e3:,.1f} ms | "
              f"{med(who, 2) * 1e3:,.1f} ms | {mib(rss)} | {bold(f'{rss / base_mem:.2f}')} | {mib(pss)} | {n:.0f} |")
    print()
    f, t1 = med("ferroserve", 0), med("torchserve-1", 0)
    print(f"ferroserve / TorchServe with OMP_NUM_THREADS=1: {f / t1:.2f}x the images/s, "
          f"{memory['ferroserve'][0] / memory['torchserve-1'][0]:.2f} of the memory. "
          f"Targets (against TorchServe's defaults): at least 3x the images/s, under 1/3 of the memory.\n")
    print(f"Both TorchServe rows: the Java frontend and {workers} Python workers (its default on a CPU: one per "
          f"core), batch size 1; torch's default is {built['threads']} intra-op threads in each worker. "
          f"ferroserve: its defaults ({layout}), one process. Memory: after the model loaded and "
          f"{CONCURRENCY} x 4 warm-up requests, idle, summed over each server's process tree (PSS splits "
          f"pages the processes share). Image: {len(jpeg):,} bytes, 640x480 JPEG (seed {built['seed']}), sent "
          f"as PUT without a content type (`curl -T`); every server's top 5 equals TorchServe's image_classifier "
          f"run in-process, in order (largest probability difference {worst:.1e}; checked again after every "
          f"round). Rounds, images/s: "
          + "; ".join(f"{who} {' / '.join(f'{x[0]:,.1f}' for x in rates[who])}" for who in ROWS)
          + ". wrk's own CPU: "
          + ", ".join(f"{med(who, 3):.2f} cores against {who}" for who in ROWS)
          + f". torch {built['torch']}, Java {java}, {os.cpu_count()} cores.\n")


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--rounds", type=int, default=ROUNDS)
    args = ap.parse_args()
    run(args.seconds, args.rounds)
