"""The web console in headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core from
npm): real servers on 127.0.0.1 with ephemeral ports, and the Node scripts of tests/browser
(node's own test runner) clicking through the console as a person would. This file starts the
servers and works out what the pages must show from the server's own routes and the Python
reference; the scripts check the pages, fail on any console error, and save a screenshot of
each page into pytest's tmp_path."""
import base64
import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

import node_env
from servers import ROOT, serve

BROWSER_TESTS = ROOT / "tests" / "browser"
CHROMIUM = pathlib.Path("/usr/bin/chromium")
MODELS = ROOT / "examples" / "models"
IMAGE = ROOT / "tests" / "fixtures" / "images" / "dog.jpg"
REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "efficientnet_top5.json"
CLASSIFIER = ROOT / "tests" / "fixtures" / "models" / "tiny-bert-classifier"
CLASSIFIER_REFERENCE = ROOT / "tests" / "fixtures" / "reference" / "tiny_bert_logits.json"
TOKEN = "console-test-token"

# `simple` again, autoscaled from two replicas: idle, its autoscaler scales it to one within a
# fraction of a second, which gives the autoscaling log a decision to show.
AUTOSCALED = """autoscaling:
  min_replicas: 1
  max_replicas: 2
  initial_replicas: 2
  downscale_delay_s: 0
  metrics_interval_s: 0.1
  look_back_period_s: 0.2
"""


def get(http, path, headers=None):
    with urllib.request.urlopen(urllib.request.Request(f"http://{http}{path}", headers=headers or {}), timeout=120) as r:
        return r.read()


def post(http, path, body, headers=None):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    with urllib.request.urlopen(urllib.request.Request(f"http://{http}{path}", data=data, headers=headers),
                                timeout=120) as r:
        return r.read()


def browser_test(script, config, tmp_path):
    """Runs tests/browser/SCRIPT with CONFIG (plus where playwright-core and the screenshots are)
    and fails with its report when any of its tests fails."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: scripts/setup.sh --test installs Debian's chromium")
    if shutil.which("node") is None:
        pytest.fail("node is missing (Debian: apt-get install nodejs npm)")
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir(exist_ok=True)
    config = {**config, "node_modules": str(node_env.node_modules()), "chromium": str(CHROMIUM),
              "screenshots": str(screenshots)}
    path = tmp_path / f"{pathlib.Path(script).stem}.json"
    path.write_text(json.dumps(config))
    done = subprocess.run(["node", "--test-reporter=spec", str(BROWSER_TESTS / script), str(path)],
                          capture_output=True, text=True, timeout=600)
    print(done.stdout, done.stderr)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    shots = sorted(p.name for p in screenshots.iterdir())
    print(f"screenshots in {screenshots}: {', '.join(shots)}")
    return shots


def demo_repository(folder):
    """The demo repository (symlinks), plus `autoscaled` and the tiny BERT sentiment classifier
    (the demo has no text-classification model)."""
    names = sorted(p.name for p in MODELS.iterdir() if p.is_dir())
    for name in names:
        os.symlink(MODELS / name, folder / name)
    (folder / "autoscaled").mkdir()
    os.symlink(MODELS / "simple" / "1", folder / "autoscaled" / "1")
    (folder / "autoscaled" / "model.yaml").write_text(AUTOSCALED)
    os.symlink(CLASSIFIER, folder / CLASSIFIER.name)
    return sorted([*names, "autoscaled", CLASSIFIER.name])


def expectations(http, models):
    """What the console must show for the demo models, from the server's own routes (and, for the
    image, the Python reference too)."""
    reference = json.loads(REFERENCE.read_text())["images"][IMAGE.name][0]["label"]
    answer = json.loads(post(http, "/predictions/efficientnet-lite0", IMAGE.read_bytes(),
                             {"Content-Type": "image/jpeg"}))
    served = max(answer, key=answer.get)
    assert served == reference, f"the server's top-1 for {IMAGE.name} is {served!r}, the reference's {reference!r}"

    # The classifier's labels and scores as the Python reference (transformers) gives them; the
    # server's own answer must agree before the page is held to them.
    examples = json.loads(CLASSIFIER_REFERENCE.read_text())["examples"]
    texts = [e["text"] for e in examples]
    answers = json.loads(post(http, f"/predictions/{CLASSIFIER.name}", {"text": texts}))
    for example, answer in zip(examples, answers):
        assert answer[0]["label"] == example["label"], (example, answer)
        assert abs(answer[0]["score"] - example["score"]) <= 1e-3, (example, answer)

    sentences = ["A man is eating food.", "A man is riding a horse."]
    data = json.loads(post(http, "/v1/embeddings", {"model": "minilm", "input": sentences}))["data"]
    vectors = np.array([d["embedding"] for d in sorted(data, key=lambda d: d["index"])], dtype=np.float64)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    cosine = unit @ unit.T

    # Greedy search, so that the summary streams token by token.
    article = "Men have landed and walked on the moon. They collected rocks and set up experiments."
    summary_parameters = {"max_new_tokens": 12, "num_beams": 1}
    summary = json.loads(post(http, "/predictions/summarize", {"text": article, "parameters": summary_parameters}))

    prompt = "a photo of the moon"
    image_parameters = {"img_size": 64, "num_inference_steps": 4, "seed": 7}
    png = post(http, "/predictions/imagine", {"prompt": prompt, "parameters": image_parameters})
    assert png.startswith(b"\x89PNG\r\n\x1a\n")

    # The autoscaler of `autoscaled` decides within a second of the start; wait for it here, so
    # that the page is checked against a decision the server reports.
    deadline = time.time() + 30
    while True:
        events = json.loads(get(http, "/console/api/autoscaling"))["events"]
        mine = [e for e in events if e["name"] == "autoscaled"]
        if mine:
            break
        assert time.time() < deadline, f"`autoscaled` was never scaled: {events}"
        time.sleep(0.2)
    assert mine[-1]["error"] is None, mine[-1]

    return {
        "models": models,
        "image": {"model": "efficientnet-lite0", "file": str(IMAGE), "top1": reference},
        "classification": {"model": CLASSIFIER.name, "texts": texts,
                           "top1": [{"label": e["label"], "score": e["score"]} for e in examples]},
        "embedding": {"model": "minilm", "sentences": sentences, "cosine": cosine.tolist()},
        "summary": {"model": "summarize", "text": article, "parameters": summary_parameters,
                    "summary": summary["summary_text"]},
        "generation": {"model": "imagine", "prompt": prompt, "parameters": image_parameters,
                       "png_base64": base64.b64encode(png).decode()},
        "tensors": {"model": "simple"},
        "autoscaled": {"name": "autoscaled", "from": mine[-1]["from"], "to": mine[-1]["to"]},
    }


def test_console_serves_every_demo_model(tmp_path):
    with tempfile.TemporaryDirectory() as repo:
        models = demo_repository(pathlib.Path(repo))
        with serve(repo) as server:
            page = get(server.http, "/").decode()
            assert '<script type="module" src="/console/console.js">' in page
            config = {"url": f"http://{server.http}/", **expectations(server.http, models)}
            shots = browser_test("console.mjs", config, tmp_path)
    assert len(shots) == 9, shots


def test_console_is_read_only_without_the_management_token(tmp_path):
    with tempfile.TemporaryDirectory() as repo:
        for name in ["simple", "identity"]:
            os.symlink(MODELS / name, pathlib.Path(repo) / name)
        with serve(repo, env={"FERROSERVE_MANAGEMENT_TOKEN": TOKEN}) as server:
            # What the page is told, and what it would be refused: the same answer.
            anonymous = json.loads(get(server.http, "/console/api/models"))
            assert anonymous["read_only"] is True
            # No server paths for a caller who may not change models.
            assert not any(m.get("source") for m in anonymous["models"])
            with pytest.raises(urllib.error.HTTPError) as refused:
                post(server.http, "/v2/repository/models/simple/unload", b"")
            assert refused.value.code == 401
            authorised = json.loads(get(server.http, "/console/api/models", {"Authorization": f"Bearer {TOKEN}"}))
            assert authorised["read_only"] is False
            config = {"url": f"http://{server.http}/", "token": TOKEN, "model": "simple", "models": ["identity", "simple"]}
            shots = browser_test("token.mjs", config, tmp_path)
    assert len(shots) == 3, shots


def test_no_console_turns_the_console_off():
    with tempfile.TemporaryDirectory() as repo:
        os.symlink(MODELS / "simple", pathlib.Path(repo) / "simple")
        with serve(repo, extra=["--no-console"]) as server:
            for path in ["/", "/console/console.js", "/console/api/models", "/console/api/autoscaling"]:
                with pytest.raises(urllib.error.HTTPError) as missing:
                    get(server.http, path)
                assert missing.value.code == 404, path
            # The API is served as before.
            assert json.loads(get(server.http, "/v2/models/simple"))["name"] == "simple"
