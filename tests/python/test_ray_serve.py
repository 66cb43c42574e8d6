"""`ferroserve run module:attribute` and `ferroserve run serve_config.yaml` (issue 19): Ray Serve
application files, unchanged but for the marked edits, served by a real server (tests/fixtures/ray).

Answers are compared with what the same code gives in-process (computed in a subprocess with the
serve environment, torch_env.serve_python(): this test venv has no torch), and the mechanics
(replicas, max_ongoing_requests, autoscaling, batching, bounded queues, user_config, config
overrides) with what they must make observable: process ids and time intervals in the answers,
and the server's /metrics."""
import base64
import concurrent.futures
import json
import re
import socket
import struct
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import torch_env
from servers import ROOT, Server, binary, run_ray

APPS = ROOT / "tests" / "fixtures" / "ray"
SHIM = ROOT / "crates" / "backends" / "python" / "python" / "shim_ray"
SD_MODEL = ROOT / "tests" / "fixtures" / "models" / "tiny-sd"

TEXTS = [
    "Men have landed and walked on the moon. Two Americans, astronauts of Apollo 11, steered "
    "their fragile four-legged lunar module safely and smoothly to the historic landing.",
    "Flat is better than nested. Sparse is better than dense. Readability counts.",
    # Spaces, '&', '+', '=' and non-ASCII characters: the query string is decoded as Starlette
    # decodes it.
    "Café crème & croissants + tea = a naïve Zürich breakfast, 100% of the time?",
]
PROMPTS = ["a photo of the moon", "rainbow unicorn butterfly kitten"]


@pytest.fixture(scope="module")
def python():
    return torch_env.serve_python()


# --------------------------------------------------------------------------------------------
# HTTP and metrics helpers
# --------------------------------------------------------------------------------------------

def get(server, path, query=None, timeout=120):
    """(status, headers (lower-case names), body bytes), whatever the status."""
    url = f"http://{server.http}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def get_json(server, path, query=None, timeout=120):
    status, headers, body = get(server, path, query, timeout)
    assert headers.get("content-type", "").startswith("application/json"), (status, headers, body)
    return status, json.loads(body)


def text(server, path, query):
    status, headers, body = get(server, path, query)
    assert status == 200, (path, query, status, body, server.text()[-3000:])
    assert headers["content-type"] == "text/plain; charset=utf-8", headers
    return body.decode("utf-8")


def at_once(calls):
    """Runs each zero-argument callable on its own thread, all at once; their results in order."""
    with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
        return [f.result() for f in [pool.submit(c) for c in calls]]


def metric(server, name, **labels):
    """The value of the series `name` whose labels include `labels`; None when absent."""
    _, _, body = get(server, "/metrics")
    for line in body.decode().splitlines():
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)", line)
        if not m or m.group(1) != name:
            continue
        have = dict(re.findall(r'([a-zA-Z_]+)="([^"]*)"', m.group(2) or ""))
        if all(have.get(k) == str(v) for k, v in labels.items()):
            return float(m.group(3))
    return None


def in_subprocess(python, script, stdin):
    """Runs `script` (arguments: the shim's folder and the applications' folder) with the serve
    environment's interpreter, feeding `stdin` as JSON; its stdout's last line as JSON."""
    done = subprocess.run([str(python), "-c", script, str(SHIM), str(APPS)], input=json.dumps(stdin),
                          capture_output=True, text=True, timeout=300, cwd=str(APPS))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The T5 summarizer: a class deployment, a function deployment
# --------------------------------------------------------------------------------------------

# What the tutorials' code answers in-process: the fixture modules imported with ferroserve's ray
# shim on sys.path, the class instantiated as Ray instantiates it, the function's module-level
# pipeline called as the function calls it.
T5_REFERENCE = r"""
import json, sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
texts = json.load(sys.stdin)
import summarizer, router
summarize = summarizer.Summarizer.func_or_class().summarize
print(json.dumps({
    "Summarizer": [summarize(t)[0]["summary_text"] for t in texts],
    "router": [router.summarizer(t)[0]["summary_text"] for t in texts],
}))
"""


@pytest.fixture(scope="module")
def t5_reference(python):
    reference = in_subprocess(python, T5_REFERENCE, TEXTS)
    # Different texts must summarise differently, or comparing with them proves little.
    assert len(set(reference["Summarizer"])) == len(TEXTS), reference
    return reference


@pytest.fixture(scope="module")
def summarizer_server(python):
    with run_ray("summarizer:summarizer_app", app_dir=APPS, python=python) as s:
        yield s


@pytest.fixture(scope="module")
def router_server(python):
    with run_ray("router:app", app_dir=APPS, python=python) as s:
        yield s


def test_summarizer_by_deployment_name_answers_what_the_class_does(summarizer_server, t5_reference):
    got = [text(summarizer_server, "/Summarizer", {"txt": t}) for t in TEXTS]
    assert got == t5_reference["Summarizer"]


def test_summarizer_at_its_route_prefix_answers_the_same(summarizer_server, t5_reference):
    got = [text(summarizer_server, "/", {"txt": t}) for t in TEXTS]
    assert got == t5_reference["Summarizer"]


def test_concurrent_summaries_equal_one_at_a_time(summarizer_server, t5_reference):
    got = at_once([lambda t=t: text(summarizer_server, "/Summarizer", {"txt": t}) for t in TEXTS * 2])
    assert got == t5_reference["Summarizer"] * 2


def test_missing_txt_is_a_500_naming_the_deployment(summarizer_server):
    # The tutorial's request.query_params["txt"] raises KeyError, which Ray answers with a 500.
    status, body = get_json(summarizer_server, "/Summarizer", {"text": "not txt"})
    assert status == 500, body
    assert "Summarizer" in body["error"] and "KeyError" in body["error"] and "txt" in body["error"], body


def test_ray_routes_and_healthz(summarizer_server):
    status, routes = get_json(summarizer_server, "/-/routes")
    assert (status, routes) == (200, {"/": "default"})
    status, _, body = get(summarizer_server, "/-/healthz")
    assert (status, body) == (200, b"success")


def test_the_log_says_the_port_and_the_application(summarizer_server):
    log = summarizer_server.text()
    port = summarizer_server.http.rsplit(":", 1)[1]
    assert port != "0" and f"HTTP listening on http://127.0.0.1:{port}" in log, log
    assert "application 'default' at /" in log, log


def test_a_clean_start_logs_no_error(summarizer_server):
    # Every worker started and stopped as planned (the one that only describes the application
    # included): nothing for an operator to see as an ERROR.
    errors = [line for line in summarizer_server.text().splitlines() if " ERROR " in line]
    assert not errors, "\n".join(errors)


def test_function_deployment_by_name_answers_what_the_function_does(router_server, t5_reference):
    got = [text(router_server, "/router", {"txt": t}) for t in TEXTS]
    assert got == t5_reference["router"]
    # The same checkpoint behind both tutorials.
    assert got == t5_reference["Summarizer"]


def test_function_deployment_missing_txt_is_a_500_naming_it(router_server):
    status, body = get_json(router_server, "/router")
    assert status == 500, body
    assert "'router'" in body["error"] and "KeyError" in body["error"], body


# --------------------------------------------------------------------------------------------
# Stable Diffusion: a FastAPI ingress, a handle call, @serve.batch
# --------------------------------------------------------------------------------------------

# The template's pipeline call, straight through diffusers, and the PNGs the ingress makes of its
# images: each prompt alone (a batch of one, seed 0), and both prompts in one batch (a generator
# seeded with 0 for each); and FastAPI's own answer to a request without `prompt` for an endpoint
# with the template's parameters.
SD_REFERENCE = r"""
import asyncio, base64, io, json, sys
request = json.load(sys.stdin)
import torch
from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
model = request["model"]
pipe = StableDiffusionPipeline.from_pretrained(
    model, scheduler=EulerDiscreteScheduler.from_pretrained(model, subfolder="scheduler"),
    torch_dtype=torch.float32).to("cpu")

def pngs(prompts):
    images = pipe(prompts, height=request["size"], width=request["size"],
                  generator=[torch.Generator().manual_seed(0) for _ in prompts]).images
    out = []
    for image in images:
        stream = io.BytesIO()
        image.save(stream, "PNG")
        out.append(base64.b64encode(stream.getvalue()).decode())
    return out

alone = [pngs([prompt])[0] for prompt in request["prompts"]]
together = pngs(request["prompts"])

from fastapi import FastAPI
api = FastAPI()

@api.get("/imagine")
async def generate(prompt: str, img_size: int = 512):
    return None

async def call(query):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await api({"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
               "scheme": "http", "path": "/imagine", "raw_path": b"/imagine", "root_path": "",
               "query_string": query, "headers": [], "client": None, "server": None}, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]).decode()

status, body = asyncio.run(call(b"img_size=64"))
print(json.dumps({"alone": alone, "together": together, "missing_prompt": [status, json.loads(body)]}))
"""


@pytest.fixture(scope="module")
def sd_reference(python):
    reference = in_subprocess(python, SD_REFERENCE, {"model": str(SD_MODEL), "prompts": PROMPTS, "size": 64})
    alone = [base64.b64decode(p) for p in reference["alone"]]
    together = [base64.b64decode(p) for p in reference["together"]]
    assert alone[0] != alone[1]
    # On this machine's CPUs batching changes the arithmetic a little (the second prompt's
    # image differs by a pixel level here and there from its image alone), so the images tell a
    # batch of two from two batches of one too; /metrics tells them apart everywhere.
    return {"alone": alone, "together": together, "missing_prompt": reference["missing_prompt"]}


@pytest.fixture(scope="module")
def sd_server(python):
    with run_ray("stable_diffusion:entrypoint", app_dir=APPS, python=python) as s:
        yield s


def imagine(server, prompt, size=64):
    status, headers, body = get(server, "/imagine", {"prompt": prompt, "img_size": size})
    assert status == 200, (status, body, server.text()[-3000:])
    assert headers["content-type"] == "image/png", headers
    return body


def png_size(png):
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:32]
    return struct.unpack(">II", png[16:24])


def batches(server):
    """(batches, requests in them) the StableDiffusionV2 deployment's queue has dispatched."""
    return (metric(server, "ferroserve_batch_size_count", model="StableDiffusionV2"),
            metric(server, "ferroserve_batch_size_sum", model="StableDiffusionV2"))


def test_imagine_answers_the_pipelines_png(sd_server, sd_reference):
    before = batches(sd_server)
    png = imagine(sd_server, PROMPTS[0])
    assert png_size(png) == (64, 64)
    assert png == sd_reference["alone"][0], "the image differs from the in-process pipeline's"
    count, rows = batches(sd_server)
    # One call: a batch of one.
    assert (count - before[0], rows - before[1]) == (1, 1)


def test_two_requests_at_once_are_one_batch_of_two(sd_server, sd_reference):
    before = batches(sd_server)
    assert before[0] is not None, "no batch-size series for StableDiffusionV2 in /metrics"
    got = at_once([lambda p=p: imagine(sd_server, p) for p in PROMPTS])
    count, rows = batches(sd_server)
    assert (count - before[0], rows - before[1]) == (1, 2), "the two calls were not batched together"
    # The images are what the pipeline makes of the two prompts in one batch (in either order:
    # each has its own generator), not of each alone.
    assert got == sd_reference["together"], "the images are not those of one batch of the two prompts"


def test_empty_prompt_is_a_500_naming_the_deployment(sd_server):
    status, body = get_json(sd_server, "/imagine", {"prompt": "", "img_size": 64})
    assert status == 500, body
    assert "APIIngress" in body["error"] and "AssertionError" in body["error"], body
    assert "prompt parameter cannot be empty" in body["error"], body


def test_missing_prompt_is_fastapis_422(sd_server, sd_reference):
    status, body = get_json(sd_server, "/imagine", {"img_size": 64})
    assert [status, body] == sd_reference["missing_prompt"]
    assert status == 422


def test_sd_routes(sd_server):
    assert get_json(sd_server, "/-/routes") == (200, {"/": "default"})
    # The model deployment takes no HTTP (no __call__, no ingress): its name is no route, and
    # the path goes to the application at "/", whose FastAPI app has no such path.
    assert get_json(sd_server, "/StableDiffusionV2") == (404, {"detail": "Not Found"})


# --------------------------------------------------------------------------------------------
# Mechanics: replicas, max_ongoing_requests, autoscaling, errors, a bounded queue
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair_server(python):
    with run_ray("counter:two", app_dir=APPS, python=python) as s:
        yield s


@pytest.fixture(scope="module")
def elastic_server(python):
    with run_ray("counter:autoscaled", app_dir=APPS, python=python) as s:
        yield s


@pytest.fixture(scope="module")
def narrow_server(python):
    with run_ray("counter:small_queue", app_dir=APPS, python=python) as s:
        yield s


def count(server, path="/", sleep=0.0, **query):
    status, body = get_json(server, path, {"sleep": sleep, **query})
    assert status == 200, (status, body, server.text()[-3000:])
    return body


def overlap(a, b):
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_two_replicas_run_two_requests_at_once(pair_server):
    a, b = at_once([lambda: count(pair_server, sleep=1.0)] * 2)
    # max_ongoing_requests=1: one request per replica at a time, so two at once are two
    # processes, both busy at the same time.
    assert a["pid"] != b["pid"], (a, b)
    assert overlap(a, b), (a, b)
    assert {a["replica"], b["replica"]} == {"Pair#0", "Pair#1"}
    assert a["greeting"] == b["greeting"] == "unset"


def test_one_replica_with_max_ongoing_1_runs_one_request_at_a_time(narrow_server):
    # The handler awaits asyncio.sleep, so the replica could run both at once: only
    # max_ongoing_requests=1 keeps the second waiting for the first.
    first, second = at_once([lambda: count(narrow_server, sleep=0.6),
                             lambda: (time.sleep(0.1), count(narrow_server, sleep=0.6))[1]])
    assert first["pid"] == second["pid"]
    assert not overlap(first, second), (first, second)


def test_a_full_queue_is_a_503(narrow_server):
    # max_queued_requests=1: one running, one waiting, the third turned away at once.
    def later(delay, **query):
        def call():
            time.sleep(delay)
            return get(narrow_server, "/", query)
        return call

    started = time.time()
    answers = at_once([later(0.0, sleep=1.5), later(0.4, sleep=0.0), later(0.8, sleep=0.0)])
    statuses = [a[0] for a in answers]
    assert statuses == [200, 200, 503], [(s, b) for s, _, b in answers]
    status, headers, body = answers[2]
    assert json.loads(body)["error"], body
    # Turned away at once, not after waiting for the queue.
    assert time.time() - started < 3.5


def test_a_user_exception_is_a_500_naming_the_deployment(narrow_server):
    status, body = get_json(narrow_server, "/", {"fail": 1})
    assert status == 500, body
    assert "Narrow" in body["error"] and "ValueError" in body["error"] and "boom" in body["error"], body
    # The replica lives on.
    assert count(narrow_server)["replica"] == "Narrow#0"


def test_autoscaling_scales_up_under_load_and_down_after(elastic_server):
    def replicas():
        return metric(elastic_server, "ferroserve_deployment_replicas", deployment="Elastic")

    assert replicas() == 1, "the Elastic deployment starts at min_replicas"
    failures, pids, seen = [], set(), [1.0]
    stop = time.time() + 4.0

    def client():
        while time.time() < stop:  # read at each turn: the test moves it
            status, _, body = get(elastic_server, "/", {"sleep": 0.4})
            if status != 200:
                failures.append((status, body))
            else:
                pids.add(json.loads(body)["pid"])

    threads = [threading.Thread(target=client) for _ in range(6)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen.append(replicas())
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert not failures, failures
    # Six clients, each with a request always in flight, target 1 per replica: up to
    # max_replicas (3), and the new replicas served some of them.
    assert max(seen) == 3, seen
    assert len(pids) == 3, pids
    # One client left, one request in flight at a time: back to min_replicas once
    # downscale_delay_s (1 s) has passed, the retired replicas finishing what they had, and the
    # remaining client's requests all answered meanwhile.
    stop = time.time() + 30
    light = threading.Thread(target=client)
    light.start()
    while replicas() != 1 and time.time() < stop:
        time.sleep(0.2)
    settled = replicas()
    stop = 0
    light.join()
    assert settled == 1, elastic_server.text()[-3000:]
    assert not failures, failures
    assert count(elastic_server)["replica"].startswith("Elastic#")


@pytest.fixture(scope="module")
def prefixed_server(python):
    with run_ray("counter:app", app_dir=APPS, python=python,
                 extra=["--route-prefix", "/api", "--name", "counting"]) as s:
        yield s


def test_route_prefix_and_name_options(prefixed_server):
    assert get_json(prefixed_server, "/-/routes") == (200, {"/api": "counting"})
    at_prefix = count(prefixed_server, "/api")
    below_prefix = count(prefixed_server, "/api/anything/below")
    by_name = count(prefixed_server, "/Counter")
    assert at_prefix["replica"] == below_prefix["replica"] == by_name["replica"] == "Counter#0"
    assert [at_prefix["count"], below_prefix["count"], by_name["count"]] == [1, 2, 3]
    # Nothing at "/" now: other paths are nobody's.
    for path in ["/", "/apix", "/elsewhere"]:
        status, body = get_json(prefixed_server, path)
        assert status == 404 and body["error"], (path, status, body)


def test_ray_default_port_is_8000(python):
    with socket.socket() as probe:
        # As the server binds (SO_REUSEADDR): connections of an earlier run in TIME_WAIT do not
        # make the port taken.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", 8000))
        except OSError:
            pytest.skip("port 8000 is taken on this machine")
    with Server(["run", "counter:app", "--app-dir", str(APPS)], python=python,
                ready_path="/-/healthz", start_timeout=120) as s:
        assert s.http == "127.0.0.1:8000", s.text()
        assert count(s)["replica"] == "Counter#0"


# --------------------------------------------------------------------------------------------
# A Ray Serve config file: two applications under two prefixes, with overrides
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def config_server(python):
    with run_ray(APPS / "serve_config.yaml", python=python) as s:
        yield s


def test_config_routes_list_both_prefixes(config_server):
    assert get_json(config_server, "/-/routes") == (200, {"/summarize": "summarizer", "/count": "counter"})


def test_config_summarizer_answers_at_its_prefix_and_by_name(config_server, t5_reference):
    got = [text(config_server, "/summarize", {"txt": t}) for t in TEXTS[:2]]
    assert got == t5_reference["Summarizer"][:2]
    assert text(config_server, "/Summarizer", {"txt": TEXTS[2]}) == t5_reference["Summarizer"][2]


def test_config_counter_answers_at_its_prefix_with_the_overrides(config_server):
    a, b = at_once([lambda: count(config_server, "/count", sleep=0.5)] * 2)
    # user_config from the file, not the code's {"greeting": "hello"}.
    assert a["greeting"] == b["greeting"] == "hello from serve_config.yaml"
    # num_replicas: 2 from the file (the code set none): two processes at once.
    assert a["pid"] != b["pid"] and overlap(a, b), (a, b)


def test_config_unknown_path_is_a_404(config_server):
    # No application at "/": a path under neither prefix, naming no deployment, is nobody's.
    status, body = get_json(config_server, "/nothing/here")
    assert status == 404, body
    assert body["error"], body


# --------------------------------------------------------------------------------------------
# Applications that cannot start: the server exits with the reason, it does not hang
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("target, reason", [
    ("no_such_module:app", "No module named 'no_such_module'"),
    ("broken:app", "broken.py fails at import on purpose"),
    ("counter:no_such_app", "no_such_app"),
])
def test_an_application_that_cannot_load_exits_non_zero_with_the_reason(python, target, reason):
    started = time.time()
    done = subprocess.run(
        [str(binary()), "run", target, "--app-dir", str(APPS), "--host", "127.0.0.1", "--port", "0",
         "--python", str(python)],
        capture_output=True, text=True, timeout=120)
    assert done.returncode != 0, done.stderr
    assert reason in done.stderr, done.stderr
    assert "listening" not in done.stderr, done.stderr
    assert time.time() - started < 60
