"""A ferroserve process for the benchmark and soak scripts: started on ephemeral ports over a
temporary repository, stopped by its PID."""

import http.client
import os
import pathlib
import re
import subprocess
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODELS = ROOT / "examples" / "models"
BIN = pathlib.Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "ferroserve"


class Server:
    """A ferroserve process on an ephemeral port over a temporary repository: `models` as plain
    models (their version folder only), `whole` as the demo configures them (tasks), `folders`
    ({name: path}) as they are. `bin`: another ferroserve build than this clone's."""

    def __init__(self, models, configs=None, whole=(), extra_args=(), folders=None, bin=None):
        self.repo = tempfile.TemporaryDirectory()
        for name, src in (folders or {}).items():
            os.symlink(src, pathlib.Path(self.repo.name) / name)
        for name, src in models.items():
            d = pathlib.Path(self.repo.name) / name
            d.mkdir()
            os.symlink(MODELS / src / "1", d / "1")
            if configs and name in configs:
                (d / "model.yaml").write_text(configs[name])
        for name in whole:
            os.symlink(MODELS / name, pathlib.Path(self.repo.name) / name)
        self.proc = subprocess.Popen([str(bin or BIN), "serve", "--http-port", "0", "--grpc-port", "0", "--management-port", "0",
                                      "--model-repository", self.repo.name, *extra_args],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        found, ev = {}, threading.Event()
        self.warnings = []

        def drain():
            for line in self.proc.stderr:
                if " WARN " in line or " ERROR " in line:
                    self.warnings.append(line.rstrip())
                m = re.search(r"(HTTP|gRPC) listening on http://([0-9.]+):([0-9]+)", line)
                if m:
                    found[m.group(1)] = (m.group(2), int(m.group(3)))
                    if len(found) == 2:
                        ev.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ev.wait(30):
            raise SystemExit("ferroserve did not start")
        self.host, self.port = found["HTTP"]
        self.grpc_port = found["gRPC"][1]
        self.url = f"http://{self.host}:{self.port}"
        conn = http.client.HTTPConnection(self.host, self.port)
        for _ in range(2400):
            conn.request("GET", "/v2/health/ready")
            r = conn.getresponse()
            r.read()
            if r.status == 200:
                return
            time.sleep(0.05)
        raise SystemExit("ferroserve never became ready")

    def rss_kib(self):
        """Resident memory of the server process, from /proc/PID/status."""
        for line in pathlib.Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise SystemExit("no VmRSS for the server")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(30)
        self.repo.cleanup()
