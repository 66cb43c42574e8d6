"""BENCHMARKS table 12: MiniLM sentence embeddings through `POST /v1/embeddings`, ferroserve beside
Hugging Face's text-embeddings-inference (TEI) with its ONNX Runtime backend, on the same ONNX
files: the demo's int8 export and the fp32 export in ../shared/models/all-MiniLM-L6-v2.

Two client shapes, as issue 23 names them: 32 clients sending one sentence each, and 4 clients
sending 32 sentences each (Python threads on keep-alive connections, `bench.closed_loop`). The
servers run one at a time, alternating, ROUNDS rounds per export; the median is reported, with
each server's idle memory (PSS) after its requests. Before any timing, both servers embed the same
sentences and must agree (cosine similarity at least 0.999 for every sentence), so the two do the
same work: mean pooling over the tokens and L2 normalisation.

ferroserve serves the demo's configuration (examples/models/minilm/model.yaml: two
single-threaded replicas, batches of up to 16) with only the ONNX file swapped. TEI runs with its
defaults (one ONNX Runtime session with one intra-op thread per core, its own batching) and
`--pooling mean`, bound to 127.0.0.1, against the same libonnxruntime as ferroserve.

No script here installs TEI: it is not on any package registry this machine reaches, so it was
built by hand from its source for this table and is never committed. Pass its router binary
with `bench.py --only tei --tei PATH` (or FERROSERVE_TEI=PATH).
"""
import json
import os
import pathlib
import re
import signal
import statistics
import subprocess
import tempfile

import numpy as np

from bench_python import free_port, ready
from bench_torchserve import idle_memory, request
from server import MODELS, ROOT, Server

ROUNDS = 3
SHAPES = [(32, 1), (4, 32)]
FP32 = ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2"
TOKENIZER_FILES = ["config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"]
LIB = pathlib.Path(os.environ.get("FERROSERVE_HOME", pathlib.Path.home() / ".ferroserve")) / "lib"


def tei_env(folder):
    """The environment TEI runs in, with ferroserve's ONNX Runtime in `folder` under the name a
    binary linked against it asks for."""
    os.symlink(LIB / "libonnxruntime.so", folder / "libonnxruntime.so.1")
    return dict(os.environ, LD_LIBRARY_PATH=f"{folder}:{os.environ.get('LD_LIBRARY_PATH', '')}", HF_HUB_OFFLINE="1")


def tei_version(binary):
    with tempfile.TemporaryDirectory() as folder:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True,
                             env=tei_env(pathlib.Path(folder)))
    if out.returncode != 0:
        raise SystemExit(f"{binary} --version failed: {out.stderr.strip()}")
    return re.sub(r"\s+", " ", out.stdout).strip()


class Tei:
    """A TEI router on an ephemeral port over a folder holding `model` and ../shared's tokenizer
    and config files, stopped by its PID."""

    def __init__(self, binary, model):
        self.dir = tempfile.TemporaryDirectory()
        folder = pathlib.Path(self.dir.name)
        for name in TOKENIZER_FILES:
            os.symlink(FP32 / name, folder / name)
        os.symlink(model, folder / "model.onnx")
        env = tei_env(folder)
        self.host, self.port = "127.0.0.1", free_port()
        self.log = open(folder / "tei.log", "w+")
        self.proc = subprocess.Popen([str(binary), "--model-id", str(folder), "--pooling", "mean",
                                      "--hostname", self.host, "--port", str(self.port),
                                      "--prometheus-port", str(free_port())],
                                     stdout=self.log, stderr=subprocess.STDOUT, env=env)
        if not ready(self.port, "/health", self.proc):
            self.log.seek(0)
            log = self.log.read()[-3000:]
            self.stop()
            raise SystemExit(f"TEI did not become healthy (exit status {self.proc.returncode}):\n{log}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        self.dir.cleanup()


def ferroserve(model):
    """The demo's MiniLM, its ONNX file swapped for `model`."""
    folder = tempfile.TemporaryDirectory()
    version = pathlib.Path(folder.name) / "1"
    version.mkdir()
    demo = MODELS / "minilm"
    for item in (demo / "1").iterdir():
        os.symlink(model if item.name == "model.onnx" else item, version / item.name)
    (pathlib.Path(folder.name) / "model.yaml").write_text((demo / "model.yaml").read_text())
    server = Server({}, folders={"minilm": folder.name})
    server.folder = folder
    return server


def stop(server):
    server.stop()
    if hasattr(server, "folder"):
        server.folder.cleanup()


def embed(server, sentences):
    status, body = request(server.host, server.port, "POST", "/v1/embeddings",
                           json.dumps({"model": "minilm", "input": sentences}),
                           {"Content-Type": "application/json"})
    if status != 200:
        raise SystemExit(f"/v1/embeddings: {status} {body[:300]!r}")
    return np.array([d["embedding"] for d in json.loads(body)["data"]], dtype=np.float64)


def measure(server, sentences, seconds, closed_loop):
    rates = {}
    headers = {"Content-Type": "application/json"}
    for clients, per in SHAPES:
        bodies = [json.dumps({"model": "minilm", "input": (sentences * per)[i:i + per]})
                  for i in range(len(sentences))]
        rates[(clients, per)] = closed_loop(server, "POST", "/v1/embeddings", bodies, clients, seconds,
                                            headers, warmup=1.0)[0] * per
    return rates, idle_memory(server.proc.pid)[1]


def run(seconds, closed_loop, binary=None):
    binary = binary or os.environ.get("FERROSERVE_TEI")
    if not binary:
        print("### 12. MiniLM: ferroserve beside text-embeddings-inference\n\n"
              "(skipped: pass a TEI router built from source with `--tei PATH`; see scripts/bench_tei.py)\n")
        return
    if not FP32.is_dir():
        print(f"### 12. (skipped: {FP32} is not here; TEI needs its config.json)\n")
        return
    version = tei_version(binary)
    ref = json.loads((ROOT / "tests" / "fixtures" / "reference" / "minilm_embeddings.json").read_text())
    sentences = ref["sentences"]
    exports = [("int8 (the demo's)", MODELS / "minilm" / "1" / "model.onnx"), ("fp32 (../shared)", FP32 / "model.onnx")]
    servers = [("ferroserve", ferroserve), ("TEI", lambda model: Tei(binary, model))]
    results = {}
    for label, model in exports:
        answers = {}
        for name, start in servers:
            s = start(model)
            try:
                answers[name] = embed(s, sentences)
            finally:
                stop(s)
        cos = np.sum(answers["ferroserve"] * answers["TEI"], axis=1) / (
            np.linalg.norm(answers["ferroserve"], axis=1) * np.linalg.norm(answers["TEI"], axis=1))
        if cos.min() < 0.999:
            raise SystemExit(f"{label}: ferroserve and TEI disagree (cosine {cos.min():.4f})")
        for _ in range(ROUNDS):
            for name, start in servers:
                s = start(model)
                try:
                    results.setdefault((label, name), []).append(measure(s, sentences, seconds, closed_loop))
                finally:
                    stop(s)
    print(f"### 12. MiniLM through /v1/embeddings: ferroserve beside {version} (ONNX Runtime backend), "
          f"{seconds:.0f} s per cell, {ROUNDS} alternating rounds, median (range)\n")
    print("Both servers answered the same sentences with the same embeddings (cosine ≥ 0.999) before timing.\n")
    print("| export | server | sentences/s, 32 clients x 1 | sentences/s, 4 clients x 32 | idle PSS after requests |")
    print("| --- | --- | --- | --- | --- |")
    for label, _ in exports:
        med = {}
        for name, _ in servers:
            runs = results[(label, name)]
            med[name] = [statistics.median(r[0][shape] for r in runs) for shape in SHAPES]
            spread = [f"{min(r[0][shape] for r in runs):,.0f}–{max(r[0][shape] for r in runs):,.0f}" for shape in SHAPES]
            pss = statistics.median(r[1] for r in runs)
            print(f"| {label} | {name} | {med[name][0]:,.0f} ({spread[0]}) | {med[name][1]:,.0f} ({spread[1]}) | "
                  f"{pss / 1024:.0f} MiB |")
        ratios = [f / t for f, t in zip(med["ferroserve"], med["TEI"])]
        print(f"| {label} | **ferroserve / TEI** | **{ratios[0]:.2f}** | **{ratios[1]:.2f}** | |")
    print()

