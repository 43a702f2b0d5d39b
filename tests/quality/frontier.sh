#!/usr/bin/env bash
# Group-wise quantization of neo-bard-8l against the size it stores: round-to-nearest and GPTQ at 8, 4, 3 and 2 bits
# in groups of 128, 64 and 32, each compressed once (`slc compress`) and measured with `slc eval` on the held-out
# tokens QUALITY.md uses (4096..12288) and on the next 8192 (12288..20480, never used to choose anything). GPTQ
# calibrates on the first 4096 tokens. Prints one Markdown row per setting (for QUALITY.md's frontier table).
#   tests/quality/frontier.sh [SETTING ...]   SETTING: METHOD:BITS:GROUP (default: all of them)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
SLC=${SLC:-$ROOT/target/release/slc}
MODEL=$ROOT/www/models/neo-bard-8l
TEXT=$ROOT/www/data/eval-dev.txt
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
settings=("$@")
if [ ${#settings[@]} -eq 0 ]; then
  for bits in 8 4 3 2; do
    for group in 128 64 32; do
      settings+=("quant:$bits:$group" "gptq:$bits:$group")
    done
  done
fi
ratio() { python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.4f %.4f" % (r["ppl_compressed"] / r["ppl_original"], r["cosine"]))'; }
echo "| method | bits | group | bits per linear parameter | ppl × (4096..12288) | cosine | ppl × (12288..20480) | cosine | seconds |"
echo "|---|---|---|---|---|---|---|---|---|"
for s in "${settings[@]}"; do
  IFS=: read -r method bits group <<<"$s"
  dir=$TMP/$method-$bits-$group
  t0=$(date +%s.%N)
  "$SLC" compress --input-dir "$MODEL" --output-dir "$dir" --method "$method" --bits "$bits" --group "$group" \
    --calibration-text "$TEXT" --calibration-tokens 4096 --calibration-window 512 --json >"$dir.json"
  t1=$(date +%s.%N)
  bpp=$(python3 -c 'import json,sys; print("%.3f" % json.load(open(sys.argv[1]))["totals"]["bits_per_param"])' "$dir.json")
  a=$("$SLC" eval --original "$MODEL" --compressed "$dir" --text "$TEXT" --skip-tokens 4096 --tokens 8192 --window 512 --json | ratio)
  b=$("$SLC" eval --original "$MODEL" --compressed "$dir" --text "$TEXT" --skip-tokens 12288 --tokens 8192 --window 512 --json | ratio)
  read -r pa ca <<<"$a"
  read -r pb cb <<<"$b"
  printf '| %s | %s | %s | %s | ×%s | %s | ×%s | %s | %.1f |\n' "$method" "$bits" "$group" "$bpp" "$pa" "$ca" "$pb" "$cb" \
    "$(python3 -c "print($t1 - $t0)")"
done
