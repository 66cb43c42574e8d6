"""The container image (Dockerfile), checked without a Docker engine: scripts/container-rootfs.sh
builds the runtime stage's file system (debootstrap of the Dockerfile's RUNTIME_PACKAGES,
deploy/docker/runtime-setup.sh, the release binary and libonnxruntime.so at the COPY lines'
paths), and the server starts in it as a container would: in its own mount, PID and network
namespaces (only a loopback there, so nothing it listens on is reachable from outside), chrooted,
as the Dockerfile's USER, in its WORKDIR, with its ENV, running ENTRYPOINT + CMD exactly as
written. Then the Dockerfile's HEALTHCHECK runs inside it and must pass, Triton's `simple` (ONNX)
and `add_sub` (Python, with Debian's python3 and numpy) answer real V2 inferences with the right
numbers, and SIGTERM stops the server (PID 1 of its namespace, as in a container) with status 0.

Needs root (debootstrap, namespaces, chroot), as CI runs; any other user fails with the reason.
The parsing checks (Dockerfile.cuda kept equal to Dockerfile's runtime stage) run as anyone."""
import json
import os
import pathlib
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import pytest

from servers import FIXTURES, ROOT, binary

DOCKERFILE = ROOT / "Dockerfile"
DOCKERFILE_CUDA = ROOT / "Dockerfile.cuda"
ROOTFS_SCRIPT = ROOT / "scripts" / "container-rootfs.sh"
# The PATH in the config of Debian's (and Ubuntu's) images, which the Dockerfile does not change.
IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TOOLS = ["unshare", "nsenter", "chroot", "mount", "ip"]


# --- The Dockerfile, parsed -------------------------------------------------------------------

def instructions(path):
    """[(INSTRUCTION, arguments)] of a Dockerfile: continuation lines joined, comments dropped
    (also those inside a continued instruction, as Docker drops them)."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += raw.rstrip()[:-1]
            continue
        current += raw
        word, _, rest = current.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    assert not current, f"{path} ends inside a continued instruction"
    return out


def runtime_stage(path):
    """The instructions of the last stage, which is the image."""
    ins = instructions(path)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    return ins[last:]


def image_config(path=DOCKERFILE):
    """What `docker run` would use: {"entrypoint", "cmd", "env", "user", "workdir", "healthcheck"}."""
    stage = runtime_stage(path)
    config = {"env": {}}
    for word, rest in stage:
        if word == "ENV":
            for item in shlex.split(rest):
                key, sep, value = item.partition("=")
                assert sep, f"ENV {rest!r}: only the KEY=VALUE form is read"
                config["env"][key] = value
        elif word in ("ENTRYPOINT", "CMD"):
            config[word.lower()] = json.loads(rest)  # the exec (JSON) form
        elif word == "USER":
            config["user"] = rest
        elif word == "WORKDIR":
            config["workdir"] = rest
        elif word == "HEALTHCHECK":
            options, sep, command = rest.partition("CMD ")
            assert sep, f"HEALTHCHECK {rest!r} has no CMD"
            config["healthcheck"] = json.loads(command)
            config["healthcheck_options"] = options.split()
    for key in ("entrypoint", "cmd", "user", "workdir", "healthcheck"):
        assert key in config, f"{path}'s runtime stage has no {key.upper()}"
    return config


def global_args(path):
    """The ARGs with defaults before the first FROM: {name: value as written}."""
    args = {}
    for word, rest in instructions(path):
        if word == "FROM":
            break
        if word == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key] = value
    return args


def test_dockerfile_describes_the_image_the_manifests_expect():
    """What the Kubernetes manifests and the runtime set-up rely on."""
    config = image_config()
    assert config["entrypoint"] == ["ferroserve"]
    assert config["cmd"] == ["serve", "--model-repository=/models", "--host=0.0.0.0"]
    assert config["user"] == "10001:10001"
    assert config["env"]["FERROSERVE_HOME"] == "/var/lib/ferroserve" == config["workdir"]
    assert config["env"]["ORT_DYLIB_PATH"] == "/usr/local/lib/ferroserve/libonnxruntime.so"
    assert config["env"]["FERROSERVE_HEALTH_URL"] == "http://127.0.0.1:8000/v2/health/ready"
    assert config["healthcheck"][0] == "python3"
    stage = runtime_stage(DOCKERFILE)
    assert stage[0] == ("FROM", "debian:bookworm-slim AS runtime")
    assert ("EXPOSE", "8000 8001 8080 9000") in stage
    packages = global_args(DOCKERFILE)["RUNTIME_PACKAGES"].strip('"').split()
    assert {"python3", "python3-numpy"} <= set(packages), packages
    runs = [rest for word, rest in stage if word == "RUN"]
    assert len(runs) == 1 and "--no-install-recommends ${RUNTIME_PACKAGES}" in runs[0] \
        and "sh /tmp/runtime-setup.sh" in runs[0], runs


def test_cuda_dockerfile_keeps_the_same_runtime_stage():
    """Dockerfile.cuda differs in its bases and ONNX Runtime's files only: the packages, the
    set-up, paths, ENV, USER, HEALTHCHECK, ENTRYPOINT and CMD are Dockerfile's."""
    cpu, cuda = runtime_stage(DOCKERFILE), runtime_stage(DOCKERFILE_CUDA)
    assert cuda[0][0] == "FROM" and "-cudnn-runtime-" in cuda[0][1] and cuda[0][1].endswith(" AS runtime")

    def same_part(stage):
        return [(w, r) for w, r in stage[1:] if not (w == "COPY" and r.startswith("--from=onnxruntime"))]

    assert same_part(cuda) == same_part(cpu)
    assert ("COPY", "--from=onnxruntime /out/ /usr/local/lib/ferroserve/") in cuda
    cpu_args, cuda_args = global_args(DOCKERFILE), global_args(DOCKERFILE_CUDA)
    for key in ("RUST_VERSION", "ORT_VERSION", "RUNTIME_PACKAGES"):
        assert cuda_args[key] == cpu_args[key], key
    text = DOCKERFILE_CUDA.read_text()
    assert "onnxruntime-gpu==${ORT_VERSION}" in text and '"libonnxruntime.so"' in text
    assert "cargo build --release --locked -p ferroserve --features cuda" in text


# --- The container ----------------------------------------------------------------------------

# Kills the container (PID 1 of its PID namespace, which takes every process there with it) once
# this test's process is gone, however it went: SIGKILL included, which no finally survives. It
# waits for EOF on a pipe whose other end only the test holds. (The server's own parent-death
# signal cannot do it: the kernel clears it when chroot --userspec changes the credentials.)
WATCHDOG = r"""
import os, signal, sys
pid, start = int(sys.argv[1]), sys.argv[2]
sys.stdin.buffer.read()
try:
    with open(f"/proc/{pid}/stat") as f:
        if f.read().rsplit(")", 1)[1].split()[19] == start:  # still that process, not a reused PID
            os.kill(pid, signal.SIGKILL)
except OSError:
    pass
"""


def start_time(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[19]


class Container:
    """ENTRYPOINT + CMD started in the runtime file system `rootfs`, in new mount, PID and
    network namespaces, chrooted, as USER, in WORKDIR, with the image's environment."""

    # Runs as root in the new namespaces (PID 1 there), then becomes the server by exec: mounts
    # what a container runtime mounts (/proc by unshare, /dev with the usual nodes and a /dev/shm,
    # a read-only /sys), raises the loopback, and chroots as the image's user. The mounts live in
    # the private mount namespace only; they vanish with it.
    START = r"""
set -eu
root=$1; userspec=$2; shift 2
ip link set lo up
mount -t tmpfs -o nosuid,mode=0755 dev "$root/dev"
for node in null zero full random urandom tty; do
  touch "$root/dev/$node"
  mount --bind "/dev/$node" "$root/dev/$node"
done
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mkdir "$root/dev/shm"
mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
exec chroot --userspec="$userspec" "$root" "$@"
"""

    def __init__(self, rootfs, config, log):
        self.rootfs = rootfs
        self.config = config
        self.uid, _, self.gid = config["user"].partition(":")
        self.env = self._environment()
        argv = config["entrypoint"] + config["cmd"]
        self.log_path = log
        self.log = open(log, "w")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--pid", "--net", "--fork", "--kill-child",
             f"--mount-proc={rootfs}/proc", "sh", "-c", self.START, "sh", str(rootfs), config["user"],
             "/usr/bin/env", "-i", "-C", config["workdir"], *self.env, *argv],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        # unshare's child: PID 1 of the new namespace, the server once exec'd.
        self.pid = self._child()
        guard, self._guard = os.pipe()
        self.watchdog = subprocess.Popen([sys.executable, "-c", WATCHDOG, str(self.pid), start_time(self.pid)],
                                         stdin=guard, start_new_session=True)
        os.close(guard)

    def _environment(self):
        """KEY=VALUE of the image: its PATH, the Dockerfile's ENV, and what docker run adds (HOME
        of the user in the image's /etc/passwd, HOSTNAME)."""
        home = "/"
        for line in (self.rootfs / "etc" / "passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[2] == self.uid:
                home = fields[5]
        env = {"PATH": IMAGE_PATH, "HOSTNAME": "ferroserve-test", "HOME": home, **self.config["env"]}
        return [f"{k}={v}" for k, v in env.items()]

    def _child(self):
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                children = pathlib.Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                return int(children[0])
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        if self.proc.poll() is None:
            self.proc.kill()  # still root, before chroot: --kill-child takes its child along
        raise RuntimeError("the container did not start:\n" + self.text())

    def text(self):
        self.log.flush()
        return pathlib.Path(self.log_path).read_text(errors="replace")

    def exec(self, argv, env=(), timeout=60):
        """`docker exec`: argv inside the container (its namespaces, root and working folder) as
        its user, with the image's environment plus `env` (KEY=VALUE)."""
        return subprocess.run(
            ["nsenter", f"--target={self.pid}", "--mount", "--net", "--pid", "--root", "--wd",
             f"--setuid={self.uid}", f"--setgid={self.gid}",
             "/usr/bin/env", "-i", *self.env, *env, *argv],
            capture_output=True, text=True, timeout=timeout)

    def http(self, method, path, body=None, port=8000):
        """A request to 127.0.0.1:port in the container's network namespace, sent by this test's
        Python (in the host's file system): (status, body text); status 0 when it cannot connect."""
        client = (
            "import json, sys, urllib.error, urllib.request\n"
            "data = sys.stdin.buffer.read() or None\n"
            "req = urllib.request.Request(sys.argv[2], data=data, method=sys.argv[1],\n"
            "                             headers={'Content-Type': 'application/json'} if data else {})\n"
            "opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))\n"
            "try:\n"
            "    with opener.open(req, timeout=30) as r:\n"
            "        status, text = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, text = e.code, e.read()\n"
            "except OSError as e:\n"
            "    status, text = 0, str(e).encode()\n"
            "print(json.dumps([status, text.decode('utf-8', 'replace')]))\n")
        done = subprocess.run(
            ["nsenter", f"--target={self.pid}", "--net", sys.executable, "-c", client, method,
             f"http://127.0.0.1:{port}{path}"],
            input=json.dumps(body).encode() if body is not None else b"", capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        status, text = json.loads(done.stdout)
        return status, text

    def wait_ready(self, timeout=120):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n" + self.text())
            if self.http("GET", "/v2/health/ready")[0] == 200:
                return
            time.sleep(0.2)
        raise RuntimeError("the server never became ready:\n" + self.text())

    def stop(self, timeout=60):
        """SIGTERM to the server; unshare exits with its status."""
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()  # --kill-child: the server and its namespace go with it
                self.proc.wait()
                raise
        return self.proc.returncode

    def close(self):
        """Kills what is left (the watchdog does, once told), and waits for it."""
        os.close(self._guard)
        self.watchdog.wait(30)
        self.proc.wait(30)
        self.log.close()


def require_root():
    if os.geteuid() != 0:
        pytest.fail("test_container.py must run as root (as CI does): it builds a Debian file system "
                    "with debootstrap and starts the server in new namespaces with chroot", pytrace=False)
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        pytest.fail(f"test_container.py needs {', '.join(missing)} (util-linux, coreutils, iproute2)",
                    pytrace=False)


@pytest.fixture(scope="module")
def rootfs():
    """The runtime file system, built by scripts/container-rootfs.sh with the binary under test,
    with Triton's `simple` (ONNX) and `add_sub` (Python) in /models as a mounted repository would
    put them (owned by another user, readable)."""
    require_root()
    work = pathlib.Path(tempfile.mkdtemp(prefix="ferroserve-container-"))
    root = work / "rootfs"
    try:
        started = time.time()
        done = subprocess.run(["bash", str(ROOTFS_SCRIPT), str(root)], capture_output=True, text=True,
                              env={**os.environ, "FERROSERVE_BIN": str(binary())}, timeout=1800)
        assert done.returncode == 0, f"container-rootfs.sh failed:\n{done.stdout}\n{done.stderr}"
        print(f"\n{done.stdout}(rootfs in {time.time() - started:.1f}s)")
        shutil.copytree(ROOT / "examples" / "models" / "simple", root / "models" / "simple")
        shutil.copytree(FIXTURES / "triton" / "add_sub", root / "models" / "add_sub")
        yield root
    finally:
        # Never delete through a mount point (there should be none: the container's mounts live
        # in its own mount namespace).
        mounted = [p for p in ("proc", "dev", "sys", "dev/shm") if os.path.ismount(root / p)]
        if mounted:
            raise RuntimeError(f"{root} still has mounts {mounted}; left it in place")
        shutil.rmtree(work)


@pytest.fixture(scope="module")
def container(rootfs):
    c = Container(rootfs, image_config(), rootfs.parent / "server.log")
    try:
        c.wait_ready()
        yield c
    finally:
        c.close()


def test_the_rootfs_is_the_dockerfiles(rootfs):
    config = image_config()
    assert (rootfs / config["env"]["ORT_DYLIB_PATH"].lstrip("/")).is_file()
    assert (rootfs / "usr/local/bin/ferroserve").read_bytes() == binary().read_bytes()
    passwd = {line.split(":")[0]: line.split(":") for line in (rootfs / "etc/passwd").read_text().splitlines()}
    assert passwd["ferroserve"][2:4] == ["10001", "10001"]
    assert passwd["ferroserve"][5] == config["env"]["FERROSERVE_HOME"]
    for folder in (config["env"]["FERROSERVE_HOME"], "/models"):
        st = (rootfs / folder.lstrip("/")).stat()
        assert (st.st_uid, st.st_gid) == (10001, 10001), folder


def test_the_server_runs_as_the_images_user_and_pid_1(container):
    status = pathlib.Path(f"/proc/{container.pid}/status").read_text()
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[:2] == ["10001", "10001"], fields["Uid"]
    assert fields["Gid"].split()[:2] == ["10001", "10001"], fields["Gid"]
    assert fields["NSpid"].split()[-1] == "1", fields["NSpid"]
    argv = pathlib.Path(f"/proc/{container.pid}/cmdline").read_bytes().split(b"\0")[:-1]
    config = image_config()
    assert [a.decode() for a in argv] == config["entrypoint"] + config["cmd"]
    assert os.readlink(f"/proc/{container.pid}/cwd") == str(container.rootfs / config["workdir"].lstrip("/"))


def test_healthcheck_passes_and_fails_when_it_should(container):
    config = image_config()
    done = container.exec(config["healthcheck"])
    assert done.returncode == 0, done.stdout + done.stderr
    # The same command against a port nothing listens on: unhealthy (exit 1, as Docker expects).
    done = container.exec(config["healthcheck"], env=["FERROSERVE_HEALTH_URL=http://127.0.0.1:9/v2/health/ready"])
    assert done.returncode == 1, done.stdout + done.stderr


def test_python_and_numpy_are_there_for_python_models(container):
    done = container.exec(["python3", "-c", "import numpy, sys; print(numpy.__version__, sys.version_info[:2])"])
    assert done.returncode == 0, done.stdout + done.stderr


def test_simple_onnx_model_answers_with_the_right_numbers(container):
    rng = random.Random(21)
    a = [rng.randint(-1000, 1000) for _ in range(32)]
    b = [rng.randint(-1000, 1000) for _ in range(32)]
    status, text = container.http("POST", "/v2/models/simple/infer", {"inputs": [
        {"name": "INPUT0", "shape": [2, 16], "datatype": "INT32", "data": a},
        {"name": "INPUT1", "shape": [2, 16], "datatype": "INT32", "data": b},
    ]})
    assert status == 200, text
    outputs = {o["name"]: o for o in json.loads(text)["outputs"]}
    assert outputs["OUTPUT0"]["shape"] == [2, 16] and outputs["OUTPUT0"]["datatype"] == "INT32"
    assert outputs["OUTPUT0"]["data"] == [x + y for x, y in zip(a, b)]
    assert outputs["OUTPUT1"]["data"] == [x - y for x, y in zip(a, b)]


def test_python_model_answers_with_the_right_numbers(container):
    """Triton's add_sub on the image's python3 and numpy, its code cached in FERROSERVE_HOME."""
    a, b = [7, -3, 100, 0], [2, 5, -50, 9]
    status, text = container.http("POST", "/v2/models/add_sub/infer", {"inputs": [
        {"name": "INPUT0", "shape": [1, 4], "datatype": "INT32", "data": a},
        {"name": "INPUT1", "shape": [1, 4], "datatype": "INT32", "data": b},
    ]})
    assert status == 200, text
    outputs = {o["name"]: o["data"] for o in json.loads(text)["outputs"]}
    assert outputs == {"OUTPUT0": [9, 2, 50, 9], "OUTPUT1": [5, -8, 150, -9]}
    assert any((container.rootfs / "var/lib/ferroserve").iterdir()), "nothing was written to FERROSERVE_HOME"


def test_sigterm_stops_the_server_cleanly(container):
    """Last: stops the container. PID 1 gets no default signal handling, so this is the server's own."""
    started = time.time()
    assert container.stop() == 0, container.text()
    assert time.time() - started < 30, container.text()
