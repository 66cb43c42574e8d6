#!/usr/bin/env bash
# Runs the whole test suite: set-up (idempotent), formatting and lint checks, the Rust unit and
# end-to-end tests (real servers on 127.0.0.1), and the Python tritonclient tests.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/setup.sh --test

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --release --locked --workspace --all-targets --quiet -- -D warnings

# candle's CUDA kernels compile with nvcc; without the toolkit, check ONNX Runtime's half.
if command -v nvcc >/dev/null; then
  echo "==> cargo check --features cuda (the GPU build must keep compiling)"
  cargo check --release --locked -p ferroserve --features cuda --quiet
else
  echo "==> cargo check --features onnx-cuda (no nvcc here for candle's CUDA kernels)"
  cargo check --release --locked -p ferroserve --features onnx-cuda --quiet
fi

echo "==> Rust tests"
cargo test --release --locked --workspace

echo "==> Python tests (tritonclient)"
export FERROSERVE_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/ferroserve"
.venv/bin/python -m pytest -q tests/python
