#!/usr/bin/env bash
# semantic-llm-compressor: set up, build, serve and test.
#   ./build.sh setup   install what a fresh machine lacks (idempotent, quick when all is there)
#   ./build.sh build   native CLI (target/release/slc) + wasm package (www/pkg)
#   ./build.sh serve   setup, build, then serve the page on http://localhost:${PORT:-8080}/
#   ./build.sh test    setup, build, then the checks (rustfmt, clippy natively and for wasm32 with warnings as errors,
#                      the page's scripts type-checked from their JSDoc) and every test: native, wasm in headless
#                      Chromium and Firefox, the page end to end, FORMAT.md's Python snippet. A missing prerequisite
#                      fails the run; nothing is skipped.
#   ./build.sh check   the checks alone (after a build: the workers' check reads the wasm package's .d.ts)
set -euo pipefail
cd "$(dirname "$0")"
# the Vulkan loader warns on every start without it
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}
ROOT=$(pwd)

# each heading says how long the run has taken so far, so that a CI log shows where its time goes
log() { printf '\n\033[1m== %s\033[0m (at %d s)\n' "$*" "$SECONDS"; }
die() { printf '\nbuild.sh: %s\n' "$*" >&2; exit 1; }
GECKODRIVER_VERSION=0.37.1

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "need root for: $*" >&2; return 1; fi
}

wasm_bindgen_version() {
  # the version pinned in Cargo.lock, so the CLI and the crate always match
  awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock
}

setup() {
  log setup
  if ! rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$'; then
    rustup target add wasm32-unknown-unknown
  fi
  cargo fmt --version >/dev/null 2>&1 && cargo clippy --version >/dev/null 2>&1 || rustup component add rustfmt clippy
  local want; want=$(wasm_bindgen_version)
  if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
    # no --locked: the registry mirror lacks one of the CLI's pinned transitive crates
    cargo install wasm-bindgen-cli --version "$want"
  fi
  local pkgs=()
  command -v chromium >/dev/null || pkgs+=(chromium)
  command -v chromedriver >/dev/null || pkgs+=(chromium-driver)
  command -v firefox-esr >/dev/null || pkgs+=(firefox-esr)
  # a Vulkan device without a GPU (Mesa's lavapipe) for the GPU wing's native tests, and vulkaninfo to see it
  has_vulkan_device || pkgs+=(mesa-vulkan-drivers vulkan-tools)
  if [ ${#pkgs[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
  fi
  if [ "$(geckodriver --version 2>/dev/null | awk 'NR==1 {print $2}')" != "$GECKODRIVER_VERSION" ]; then
    cargo install geckodriver --version "$GECKODRIVER_VERSION"
  fi
  if [ ! -d tests/e2e/node_modules/playwright-core ] || [ ! -d tests/e2e/node_modules/typescript ]; then
    (cd tests/e2e && npm install --no-audit --no-fund --silent)
  fi
  command -v python3 >/dev/null || die "python3 is needed for the FORMAT.md test"
  python3 -c 'import numpy, safetensors' 2>/dev/null || python3 -m pip install -q -r tests/format/requirements.txt
  check_prerequisites
}

# A Vulkan device the GPU wing's native tests run on (lavapipe where there is no GPU).
has_vulkan_device() {
  command -v vulkaninfo >/dev/null && vulkaninfo --summary 2>/dev/null | grep -q 'deviceName'
}

# Everything the tests need, or a loud failure naming what is missing.
check_prerequisites() {
  local missing=()
  rustup target list --installed 2>/dev/null | grep -q '^wasm32-unknown-unknown$' || missing+=("rust target wasm32-unknown-unknown")
  [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" = "$(wasm_bindgen_version)" ] || missing+=("wasm-bindgen $(wasm_bindgen_version)")
  local tool
  for tool in chromium chromedriver firefox-esr geckodriver node; do
    command -v "$tool" >/dev/null || missing+=("$tool")
  done
  [ -d tests/e2e/node_modules/playwright-core ] || missing+=("npm package playwright-core (tests/e2e)")
  [ -d tests/e2e/node_modules/typescript ] || missing+=("npm package typescript (tests/e2e)")
  cargo fmt --version >/dev/null 2>&1 || missing+=("rustfmt")
  cargo clippy --version >/dev/null 2>&1 || missing+=("clippy")
  python3 -c 'import numpy, safetensors' 2>/dev/null || missing+=("python3 with numpy and safetensors")
  has_vulkan_device || missing+=("a Vulkan device (mesa-vulkan-drivers)")
  [ -d ../shared/models/neo-bard-8l ] || missing+=("../shared (the test fixtures)")
  [ ${#missing[@]} -eq 0 ] || die "missing prerequisites: ${missing[*]}"
}

build() {
  log "build: native CLI"
  cargo build --release --bin slc
  log "build: wasm package"
  cargo build --release --lib --target wasm32-unknown-unknown
  wasm-bindgen --target web --out-dir www/pkg \
    target/wasm32-unknown-unknown/release/semantic_llm_compressor.wasm
  ls -l www/pkg/*.wasm
}

serve() {
  local port=${PORT:-8080}
  log "serving $ROOT"
  echo "open http://localhost:$port/"
  exec python3 -m http.server "$port" --bind 127.0.0.1 --directory "$ROOT"
}

# The checks people expect, each failing the run: formatting, clippy's lints natively and for wasm32 (warnings are
# errors), and the page's scripts type-checked from their JSDoc against protocol.js's typedefs (the main thread with
# the DOM's types, the workers with the worker's; the wasm package's own .d.ts describes its exports).
run_checks() {
  log "check: rustfmt"
  cargo fmt --check
  log "check: clippy, native"
  cargo clippy --all-targets -- -D warnings
  log "check: clippy, wasm32"
  cargo clippy --target wasm32-unknown-unknown --lib --tests -- -D warnings
  log "check: the page's scripts (tsc --checkJs)"
  local tsc=tests/e2e/node_modules/typescript/bin/tsc
  node "$tsc" -p www/tsconfig.json
  node "$tsc" -p www/tsconfig.worker.json
}

run_tests() {
  check_prerequisites
  run_checks
  # the tests build with the `testing` profile (Cargo.toml): release optimisation without the whole-program link
  log "test: native (cargo test)"
  cargo test --profile testing
  log "test: wasm in headless Chromium"
  CHROMEDRIVER=$(command -v chromedriver) WASM_BINDGEN_TEST_TIMEOUT=600 \
    cargo test --profile testing --target wasm32-unknown-unknown --tests
  log "test: wasm in headless Firefox"
  GECKODRIVER=$(command -v geckodriver) WASM_BINDGEN_TEST_TIMEOUT=600 \
    cargo test --profile testing --target wasm32-unknown-unknown --tests
  log "test: FORMAT.md's Python snippet"
  python3 tests/format/rebuild_test.py
  log "test: the page end to end (Playwright + Chromium)"
  node tests/e2e/page.test.mjs
  log "test: failure in the page: damaged files, a worker that traps or hangs, helpers that die (Playwright + Chromium)"
  node tests/e2e/faults.test.mjs
  log "test: the page as a talk, keyboard only: the origin's story, the report, the link (Playwright + Chromium)"
  node tests/e2e/talk.test.mjs
  log "test: the GPU in the page against the CPU (Playwright + Chromium's SwiftShader WebGPU adapter)"
  node tests/e2e/gpu.test.mjs
  log "all tests passed"
}

# Benchmarks (figures only, no assertions; record them in BENCHMARKS.md with these commands). Checkpoints of the
# published shapes are made by `slc synth` under $BENCH_DIR (default /tmp/slc-bench): 0.5 GB for 125M, 5.3 GB for
# 1.3B. BENCH=quick skips the 1.3B runs.
run_bench() {
  check_prerequisites
  local dir=${BENCH_DIR:-/tmp/slc-bench} slc=target/release/slc
  mkdir -p "$dir"
  for shape in 125M 1.3B; do
    [ "$shape" = 1.3B ] && [ "${BENCH:-}" = quick ] && continue
    [ -f "$dir/$shape/model.safetensors" ] || $slc synth --config "tests/configs/gpt-neo-$shape.json" --out "$dir/$shape"
  done
  log "bench: randomized SVD, native (one thread) and wasm (headless Chromium, one worker)"
  $slc bench svd --shapes 768x768,768x3072,2048x2048,2048x8192 --exact --save "$dir/svd"
  if python3 -c 'import numpy' 2>/dev/null; then
    log "bench: numpy's LAPACK SVD and a numpy randomized SVD on the same matrices (one OpenBLAS thread, then all)"
    OPENBLAS_NUM_THREADS=1 python3 tests/bench/svd-numpy.py "$dir/svd"
    OPENBLAS_NUM_THREADS=1 python3 tests/bench/svd-numpy.py "$dir/svd" --iters 1
    python3 tests/bench/svd-numpy.py "$dir/svd"
  else
    log "bench: numpy is not installed here: its LAPACK rows are skipped (pip install numpy)"
  fi
  node tests/e2e/scale.mjs svd 768x768 768x3072 2048x2048 2048x8192
  log "bench: compression of the 125M shape at rank 128, every layer: CLI on 1 thread and on every core"
  $slc compress --input-dir "$dir/125M" --output-dir "$dir/125M-r128" --rank 128 --threads 1 | tail -2 | head -1
  $slc compress --input-dir "$dir/125M" --output-dir "$dir/125M-r128" --rank 128 | tail -2 | head -1
  log "bench: decode, original vs compressed side by side (native)"
  $slc bench decode --model "$dir/125M" --model "$dir/125M-r128" --tokens 64 --runs 3 | tail -2
  log "bench: the page on the 125M shape: compress, evaluate 2048 tokens, generate side by side"
  node tests/e2e/scale.mjs model "$dir/125M" 2048
  if [ "${BENCH:-}" != quick ]; then
    log "bench: the page on the 1.3B shape (5.3 GB f32, one file): compress, evaluate 512 tokens, generate"
    node tests/e2e/scale.mjs model "$dir/1.3B" 512
  fi
}

case "${1:-}" in
  setup) setup ;;
  bench) build; run_bench ;;
  build) build ;;
  check) check_prerequisites; run_checks ;;
  serve) setup; build; serve ;;
  test) setup; build; run_tests ;;
  *) echo "usage: $0 setup|build|serve|test|check|bench" >&2; exit 2 ;;
esac
