#!/usr/bin/env bash
# Runs the cargo fuzz targets in fuzz/ (nightly Rust and cargo-fuzz, installed here when
# missing), each for SECONDS (default 600), two at a time, and reports what they found.
#
#   scripts/fuzz.sh [SECONDS] [TARGET ...]
#
# The corpus each run grows is kept in fuzz/corpus/TARGET (not committed); the seeds in
# fuzz/seeds/TARGET start it. A crash is written to fuzz/artifacts/TARGET; minimise it with
# `cargo +nightly fuzz tmin TARGET FILE`, fix the bug, and commit the minimised input to
# fuzz/regressions/TARGET, which `cargo test -p ferroserve --test fuzz_regressions` replays on
# every test run. Not part of CI: ten minutes a target is more than CI's time.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

SECONDS_EACH="${1:-600}"
shift || true
ALL=(v2_request v2_data multipart grpc_request image far_unpack model_yaml flow_yaml)
TARGETS=("${@:-${ALL[@]}}")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL[@]}")
JOBS="${FUZZ_JOBS:-2}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "==> installing the nightly toolchain (cargo fuzz needs it)"
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

echo "==> building ${#TARGETS[@]} targets (nightly, address sanitizer; the first build takes a while)"
for t in "${TARGETS[@]}"; do
  cargo +nightly fuzz build "$t"
done

mkdir -p logs
run_one() {
  local t="$1"
  mkdir -p "corpus/$t" "seeds/$t"
  # -rss_limit_mb: an input that makes a decoder allocate gigabytes is a finding too.
  if cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$SECONDS_EACH" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      >"logs/$t.log" 2>&1; then
    echo "$t: no crash in ${SECONDS_EACH} s ($(grep -o 'stat::number_of_executed_units: *[0-9]*' "logs/$t.log" | grep -o '[0-9]*$') runs, corpus $(ls "corpus/$t" | wc -l) inputs)"
  else
    echo "$t: FOUND A CRASH, see fuzz/logs/$t.log and fuzz/artifacts/$t"
    return 1
  fi
}
export -f run_one
export SECONDS_EACH
failed=0
printf '%s\n' "${TARGETS[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}' || failed=1
exit "$failed"
