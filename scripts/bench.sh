#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: set-up, the peers (nginx and wrk from Debian, onnxruntime from
# PyPI for the in-process baseline, sentence-transformers from PyPI for the Python embedding
# peer), then scripts/bench.py. Table 6's peers (transformers and diffusers on PyTorch) run in
# tests/python/torch_env.py's serve environment, made by scripts/bench_generative.py when missing. Table 8's peers
# (nvidia-pytriton's tritonserver, sentence-transformers for the SentenceEncoder executor) are
# installed by scripts/bench_python.py into venvs under ~/.cache/ferroserve, and table 9's
# (TorchServe 0.12 with captum) by scripts/bench_torchserve.py, and table 10's (Ray Serve 2.60)
# by scripts/bench_ray.py. Loopback traffic only.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" --test
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  # policy-rc.d-style environments refuse to start the system nginx; the benchmark runs its own.
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q nginx wrk
fi
# TorchServe (table 9's peer, installed by scripts/bench_torchserve.py) runs on Java 17.
if ! command -v java >/dev/null && [ -z "${JAVA_HOME:-}" ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q openjdk-17-jre-headless
fi
"$ROOT/.venv/bin/python" -c "import onnxruntime" 2>/dev/null \
  || "$ROOT/.venv/bin/python" -m pip install --quiet "onnxruntime==1.31.1"
# The Python peer for embeddings (table 5). It brings PyTorch: a large download, once.
"$ROOT/.venv/bin/python" -c "import sentence_transformers" 2>/dev/null \
  || "$ROOT/.venv/bin/python" -m pip install --quiet "sentence-transformers==6.2.0"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/bench.py" "$@"
