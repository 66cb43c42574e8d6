"""Starts a real ferroserve (`serve` or `run`) on 127.0.0.1 with ephemeral ports, for the tests of
Python models and executors; stops it by its PID."""
import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "python"
# The interpreter the workers run with: this test venv's, which has numpy.
PYTHON = sys.executable


def binary() -> pathlib.Path:
    if os.environ.get("FERROSERVE_BIN"):
        return pathlib.Path(os.environ["FERROSERVE_BIN"])
    target = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    return target / "release" / "ferroserve"


class Server:
    """`ferroserve <args> --python PYTHON`; `.http`/`.grpc`/`.management` are the listeners'
    host:port, `.log` what it printed.

    python: the workers' interpreter (default: this test venv's); None passes no --python.
    listeners: the listeners (as the server logs them: "HTTP", "gRPC", "management API",
    "metrics") to wait for; default HTTP, and gRPC when --grpc-port is given; empty: wait for none
    (then ready_path, if waited for, must be a full URL)."""

    def __init__(self, args, env=None, ready_path="/v2/health/ready", wait_ready=True, python=PYTHON,
                 listeners=None, start_timeout=60):
        if listeners is None:
            listeners = {"HTTP", "gRPC"} if "--grpc-port" in args else {"HTTP"}
        self._wanted = set(listeners)
        self.log = []
        self.found = {}
        self._listening = threading.Event()
        if not self._wanted:
            self._listening.set()
        full_env = dict(os.environ)
        full_env.update(env or {})
        full_env.setdefault("RUST_LOG", "info")
        self.proc = subprocess.Popen(
            [str(binary()), *args, *(["--python", str(python)] if python else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=full_env,
        )
        threading.Thread(target=self._drain, daemon=True).start()
        try:
            deadline = time.time() + start_timeout
            # A server that exits while it starts (a model or application that fails to load)
            # is reported at once, not after the timeout.
            while not self._listening.wait(0.2):
                if self.proc.poll() is not None or time.time() > deadline:
                    time.sleep(0.2)  # the rest of its log
                    raise RuntimeError("ferroserve did not start:\n" + self.text())
            if wait_ready:
                self.wait_ready(ready_path)
        except BaseException:
            self.stop()
            raise

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.search(r"(HTTP|gRPC|management API|metrics) listening on http://([0-9.]+:[0-9]+)", line)
            if m:
                self.found[m.group(1)] = m.group(2)
                if self._wanted <= self.found.keys():
                    self._listening.set()

    @property
    def http(self):
        return self.found["HTTP"]

    @property
    def grpc(self):
        return self.found.get("gRPC")

    @property
    def management(self):
        return self.found.get("management API")

    def text(self):
        return "".join(self.log)

    def wait_ready(self, path, timeout=120):
        deadline = time.time() + timeout
        url = path if "://" in path else f"http://{self.http}{path}"
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"ferroserve never became ready at {url}:\n" + self.text())
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def free_port() -> int:
    """A loopback port free right now (for servers whose ports the test must name up front)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def image_env() -> dict:
    """What the container image's own ENV gives every pod (the Dockerfile sets ORT_DYLIB_PATH),
    pointed at this machine's copy of the library."""
    home = pathlib.Path(os.environ.get("FERROSERVE_HOME", pathlib.Path.home() / ".ferroserve"))
    return {"ORT_DYLIB_PATH": str(home / "lib" / "libonnxruntime.so")}


def infer_simple(http, name="simple", add=1):
    """Sends Triton's `simple` (INPUT0 + INPUT1, INPUT0 - INPUT1 over INT32 [1, 16]) one request
    with INPUT1 all `add` and checks both outputs."""
    body = {"inputs": [
        {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16], "data": list(range(16))},
        {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16], "data": [add] * 16},
    ]}
    req = urllib.request.Request(f"http://{http}/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            out = {o["name"]: o["data"] for o in json.load(r)["outputs"]}
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{name}: HTTP {e.code}: {e.read()!r}") from None
    assert out["OUTPUT0"] == [i + add for i in range(16)]
    assert out["OUTPUT1"] == [i - add for i in range(16)]


def serve(repository, env=None, extra=()):
    """`ferroserve serve` over `repository` with ephemeral ports."""
    return Server(["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0",
                   "--management-port", "0", "--model-repository", str(repository), *extra], env=env)


def run(flow_file, env=None, extra=()):
    """`ferroserve run FILE` with an ephemeral HTTP port."""
    return Server(["run", str(flow_file), "--host", "127.0.0.1", "--port", "0", *extra], env=env,
                  ready_path="/v2/health/ready")


def run_ray(target, app_dir=None, python=PYTHON, env=None, extra=(), start_timeout=180):
    """`ferroserve run TARGET` for a Ray Serve application (`module:attribute` imported from
    app_dir, or a config file with `applications:`) with an ephemeral HTTP port; ready once it
    listens (it listens only after every deployment started), checked at Ray's /-/healthz."""
    args = ["run", str(target), "--host", "127.0.0.1", "--port", "0", *extra]
    if app_dir is not None:
        args += ["--app-dir", str(app_dir)]
    return Server(args, env=env, python=python, ready_path="/-/healthz", start_timeout=start_timeout)
