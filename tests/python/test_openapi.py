"""The OpenAPI description at /openapi.json: it validates as OpenAPI 3.1 on every router that
serves one (the HTTP port, the management port, a `ferroserve run` Flow), and schemathesis,
generating requests from it for a bounded number of examples per operation, finds no 5xx and no
answer that contradicts it (status, content type, body schema)."""
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import urllib.request

from openapi_spec_validator import validate

from servers import FIXTURES, ROOT, run, serve

MODELS = ROOT / "examples" / "models"
# Cheap models only: schemathesis sends hundreds of requests, and a text-to-image model asked for
# its largest image would spend minutes on each.
CHEAP = ["simple", "identity", "string_identity"]


def description(address):
    with urllib.request.urlopen(f"http://{address}/openapi.json", timeout=30) as r:
        assert r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


def check(address, title):
    """Validates the description at ADDRESS and returns it."""
    api = description(address)
    validate(api)
    assert api["openapi"].startswith("3.1."), api["openapi"]
    assert api["info"]["title"] == title, api["info"]
    with urllib.request.urlopen(f"http://{address}/docs", timeout=30) as r:
        page = r.read().decode()
    assert "swagger-ui" in page and "/openapi.json" in (page + urllib.request.urlopen(
        f"http://{address}/docs/docs.js", timeout=30).read().decode())
    return api


# Model names and versions that exist, drawn most of the time in place of random strings, so that
# requests reach the models rather than a 404.
CONFIG = """
[dictionaries.models]
values = [%s]

[dictionaries.versions]
values = ["1"]

[parameters]
"path.model" = { dictionary = "models", probability = 0.8 }
"path.version" = { dictionary = "versions", probability = 0.8 }
""" % ", ".join(f'"{name}"' for name in CHEAP)


def schemathesis(address, tmp, real_names, examples=8):
    """Runs schemathesis' CLI against the description at ADDRESS; fails with its report.

    real_names: draw the model names from CHEAP. Those runs leave out the operations that unload
    or unregister a model: an unloaded model answers 503, as it should, which the run would
    report as a server error for every operation after it; the runs with random names cover
    them."""
    st = pathlib.Path(sys.executable).with_name("st")
    config = pathlib.Path(tmp) / "schemathesis.toml"
    config.write_text(CONFIG if real_names else "")
    leave_out = ["--exclude-path-regex", "/v2/repository/models/", "--exclude-method", "DELETE"] if real_names else []
    report = subprocess.run(
        [str(st), "--config-file", str(config), "run", f"http://{address}/openapi.json",
         "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                     "response_schema_conformance",
         "--max-examples", str(examples), "--seed", "1", "--workers", "1",
         "--request-timeout", "60", *leave_out],
        capture_output=True, text=True, timeout=1200, cwd=tmp, env={**os.environ, "NO_COLOR": "1"},
    )
    assert report.returncode == 0, f"schemathesis found problems:\n{report.stdout[-20000:]}\n{report.stderr[-5000:]}"
    assert "Tested:" in report.stdout, report.stdout
    return report.stdout


def operations(api):
    return {(method.upper(), path) for path, item in api["paths"].items() for method in item}


def test_every_router_describes_itself_as_openapi_31(tmp_path):
    with tempfile.TemporaryDirectory() as repo:
        for name in CHEAP:
            os.symlink(MODELS / name, pathlib.Path(repo) / name)
        with serve(repo) as server:
            api = check(server.http, "ferroserve")
            served = operations(api)
            # The inference protocols, the task routes, health and metrics, and the console.
            for op in [("POST", "/v2/models/{model}/infer"), ("GET", "/v2/health/ready"),
                       ("POST", "/predictions/{model}"), ("PUT", "/predictions/{model}"),
                       ("POST", "/v1/embeddings"), ("GET", "/metrics"), ("GET", "/"),
                       ("GET", "/console/api/models"), ("POST", "/v2/repository/index")]:
                assert op in served, op
            management = check(server.management, "ferroserve management")
            assert ("POST", "/models") in operations(management)
            assert ("GET", "/models/{model}") in operations(management)
    with run(FIXTURES / "executors" / "flow.yml") as flow:
        api = check(flow.http, "ferroserve")
        # Jina's document routes beside the HTTP port's own.
        assert {("POST", "/post"), ("POST", "/{name}"), ("POST", "/v2/models/{model}/infer")} <= operations(api)


def test_schemathesis_finds_no_server_error_and_no_answer_against_the_description(tmp_path):
    with tempfile.TemporaryDirectory() as repo:
        for name in CHEAP:
            os.symlink(MODELS / name, pathlib.Path(repo) / name)
        with serve(repo) as server:
            for address in [server.http, server.management]:
                for real_names in [True, False]:
                    print(schemathesis(address, tmp_path, real_names)[-2000:])
            # The models are all still served: nothing schemathesis sent took the server down.
            with urllib.request.urlopen(f"http://{server.http}/v2/health/ready", timeout=30) as r:
                assert json.loads(r.read()) == {"ready": True}
