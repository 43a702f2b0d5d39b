#!/usr/bin/env bash
# Fuzz each reader for SECONDS (default 600): tests/fuzz.rs's seeded mutation loop, one target per process, JOBS at
# a time (default 1). A failing input is written to target/fuzz/ (and an input that hangs or asks for more than the
# allocation cap aborts its process, leaving itself in target/fuzz/TARGET.current); commit it to
# tests/fuzz/corpus/TARGET/ to keep it as a regression input.
#   tests/fuzz/run.sh [SECONDS] [TARGET ...]       SLC_FUZZ_SEED=N picks another sequence of mutations; JOBS=2
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-600}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(header config index compressed policy pytorch slow)
cargo test --release --test fuzz --no-run
mkdir -p target/fuzz
pids=()
for t in "${targets[@]}"; do
  SLC_FUZZ_SECONDS=$seconds cargo test --release --test fuzz "fuzz_$t" -- --nocapture --exact >"target/fuzz/$t.log" 2>&1 &
  pids+=("$!:$t")
  while [ "$(jobs -rp | wc -l)" -ge "${JOBS:-1}" ]; do sleep 1; done
done
status=0
for p in "${pids[@]}"; do
  if ! wait "${p%%:*}"; then status=1; echo "FAILED: ${p#*:} (target/fuzz/${p#*:}.log)"; fi
done
for t in "${targets[@]}"; do grep -h "^fuzz $t:" "target/fuzz/$t.log" || tail -5 "target/fuzz/$t.log"; done
exit $status
