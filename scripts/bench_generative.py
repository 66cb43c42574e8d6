"""BENCHMARKS table 6: the generative tasks over HTTP beside transformers and diffusers on PyTorch
(CPU, in-process, the same threads), one request at a time, in one run.

- tiny-t5 (tests/fixtures/models/tiny-t5): greedy, 4 beams and sampling, 64 new tokens each.
- tiny-sd (tests/fixtures/models/tiny-sd, VAE scale factor 2) at 64, 256 and 512: at 512 its UNet
  attends over 16,384 tokens and its VAE over 65,536.
- A Stable Diffusion 1.5-shaped pipeline with random weights (scripts/make_sd15_shaped.py, made
  under ~/.cache/ferroserve when missing) at 512: 4,096 tokens at the UNet's first level.

Large images take minutes on PyTorch, so they run fewer steps and fewer rounds; each row says
how many. Guidance 7.5 (two UNet rows per step), Euler; the text encoder and the VAE are in
every time. The peers run in tests/python/torch_env.py's serve environment (PyTorch 2.15,
transformers 5.23, diffusers 0.42.1), made under ~/.cache/ferroserve when missing: `run`
starts this file there.
"""
import os
import pathlib
import statistics
import subprocess
import sys
import time
from urllib.parse import quote

from server import ROOT, Server

SD15 = pathlib.Path.home() / ".cache" / "ferroserve" / "sd15-shaped"
TEXT = ("Men have landed and walked on the moon. Two Americans, astronauts of Apollo 11, steered their "
        "fragile four-legged lunar module safely to the historic landing.")
PROMPT = "a photo of the moon"
NEW = 64


def get(server, path):
    import http.client
    conn = http.client.HTTPConnection(server.host, server.port, timeout=3600)
    conn.request("GET", path)
    r = conn.getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"GET {path}: {r.status} {body[:200]!r}")
    conn.close()
    return body


def alternate(a, b, rounds, warm=1):
    """Times `a` and `b` alternately `rounds` times each, after `warm` untimed calls of each."""
    for _ in range(warm):
        a()
        b()
    out = ([], [])
    for _ in range(rounds):
        for fn, times in ((a, out[0]), (b, out[1])):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return statistics.median(out[0]), statistics.median(out[1])


def run(seconds):
    """Prints table 6, measured from the serve environment's Python."""
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    import torch_env
    python = torch_env.serve_python()
    subprocess.run([str(python), __file__, str(seconds)], check=True)


def measure(seconds):
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import AutoTokenizer, T5ForConditionalGeneration
    torch.set_num_threads(os.cpu_count())
    if not (SD15 / "model_index.json").exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / "make_sd15_shaped.py"), str(SD15)], check=True)
    fixtures = ROOT / "tests" / "fixtures" / "models"
    t5 = T5ForConditionalGeneration.from_pretrained(str(fixtures / "tiny-t5")).eval()
    tok = AutoTokenizer.from_pretrained(str(fixtures / "tiny-t5"))
    ids = tok(TEXT, return_tensors="pt")
    pipes = {}
    for name, path in (("tiny-sd", fixtures / "tiny-sd"), ("sd15", SD15)):
        pipe = StableDiffusionPipeline.from_pretrained(str(path), safety_checker=None)
        pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        pipes[name] = pipe
    task = "backend: candle\ntask: text-to-image\n"
    server = Server({"t5": "summarize"}, folders={"sd": _version_folder(fixtures / "tiny-sd", task),
                                                  "sd15": _version_folder(SD15, task)})
    rows = []
    try:
        samplings = (("greedy", "num_beams=1", dict(num_beams=1)),
                     ("4 beams", "num_beams=4", dict(num_beams=4)),
                     ("sampling (top_k 50, top_p 0.9, temperature 0.7)",
                      "do_sample=true&top_k=50&top_p=0.9&temperature=0.7&seed=1",
                      dict(do_sample=True, top_k=50, top_p=0.9, temperature=0.7)))
        for name, query, kwargs in samplings:
            path = f"/t5?txt={quote(TEXT)}&max_new_tokens={NEW}&min_new_tokens={NEW}&{query}"

            def torch_gen():
                with torch.inference_mode():
                    out = t5.generate(**ids, max_new_tokens=NEW, min_new_tokens=NEW, **kwargs)
                assert out.shape[1] == NEW + 1

            ours, theirs = alternate(lambda: get(server, path), torch_gen, rounds=max(10, int(4 * seconds)))
            rows.append((f"tiny-t5, {name}, {NEW} new tokens", ours / NEW * 1e3, theirs / NEW * 1e3, "ms per token"))
        for model, pipe_name, size, steps, rounds in (("sd", "tiny-sd", 64, 20, 5), ("sd", "tiny-sd", 256, 20, 2),
                                                      ("sd", "tiny-sd", 512, 4, 1), ("sd15", "sd15", 512, 2, 1)):
            pipe = pipes[pipe_name]
            path = (f"/{model}?prompt={quote(PROMPT)}&num_inference_steps={steps}&img_size={size}"
                    "&seed=1&scheduler=euler&guidance_scale=7.5")

            def torch_sd():
                with torch.inference_mode():
                    pipe(PROMPT, num_inference_steps=steps, height=size, width=size, guidance_scale=7.5)

            ours, theirs = alternate(lambda: get(server, path), torch_sd, rounds, warm=1 if size < 512 else 0)
            label = "tiny-sd" if pipe_name == "tiny-sd" else "SD 1.5-shaped UNet + VAE (random weights)"
            rows.append((f"{label}, {size}x{size}, {steps} steps, median of {rounds}", ours, theirs, "s per image"))
            print(f"  {rows[-1][0]}: {ours:.1f} s vs {theirs:.1f} s", file=sys.stderr, flush=True)
    finally:
        server.stop()
    print("### 6. Generative tasks, one request at a time (`--only generative`)\n")
    print(f"torch {torch.__version__} (CPU, {torch.get_num_threads()} threads); ferroserve over HTTP\n")
    print("| workload | ferroserve (HTTP, candle) | PyTorch eager in-process | PyTorch time / ferroserve time |")
    print("| --- | --- | --- | --- |")
    # Every row is a time: the ratio is PyTorch's time over ferroserve's (above 1: ferroserve is faster).
    for name, a, b, unit in rows:
        print(f"| {name} | {a:,.2f} {unit} | {b:,.2f} {unit} | {b / a:.2f} |")
    print()


def _version_folder(pipeline, model_yaml):
    """A model folder whose version 1 is `pipeline`, configured by `model_yaml`."""
    import tempfile
    d = pathlib.Path(tempfile.mkdtemp(prefix="ferroserve-bench-"))
    (d / "model.yaml").write_text(model_yaml)
    os.symlink(pipeline, d / "1")
    return d


if __name__ == "__main__":
    measure(float(sys.argv[1]))
