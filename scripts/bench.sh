#!/usr/bin/env bash
# Reproduces BENCHMARKS.md: set-up, onnxruntime for the in-process baseline, then the benchmark.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh" --test
"$ROOT/.venv/bin/python" -c "import onnxruntime" 2>/dev/null \
  || "$ROOT/.venv/bin/python" -m pip install --quiet "onnxruntime==1.31.1"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/bench.py" "$@"
