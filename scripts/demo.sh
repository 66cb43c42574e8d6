#!/usr/bin/env bash
# Quick start, step one: set everything up (ONNX Runtime, demo models, release build) and serve
# the demo repository (examples/models) on http://127.0.0.1:8000 until Ctrl-C.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/setup.sh"
echo "==> serving examples/models: open http://127.0.0.1:${PORT:-8000}/ (the console) or /docs (the API reference)"
exec "${CARGO_TARGET_DIR:-$ROOT/target}/release/ferroserve" serve \
  --model-repository "$ROOT/examples/models" --http-port "${PORT:-8000}" "$@"
