#!/usr/bin/env bash
# Reproduce the reference table of ../shared/reference/README.md with the CLI and print QUALITY.md's table.
#   tests/quality/reproduce.sh [MODEL_DIR] [TEXT] [TOKENS] [WINDOW]
# Every row is `slc compress ...` then `slc eval --json ...`; the commands are printed above the table.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-www/models/neo-bard-8l}
TEXT=${2:-www/data/eval-dev.txt}
TOKENS=${3:-8192}
WINDOW=${4:-512}
SLC=target/release/slc
[ -x "$SLC" ] || cargo build --release --bin slc >&2
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
MLP="--skip mlp.c_fc --skip mlp.c_proj"
ORIGIN="--quant per-tensor --no-break-even-guard"

rows=(
  "origin pipeline, rank 16, every linear layer|--rank 16 $ORIGIN"
  "origin pipeline, rank 16, MLP skipped|--rank 16 $ORIGIN $MLP"
  "origin pipeline, rank 32, every linear layer|--rank 32 $ORIGIN"
  "origin pipeline, rank 32, MLP skipped|--rank 32 $ORIGIN $MLP"
  "origin pipeline, rank 64, every linear layer|--rank 64 $ORIGIN"
  "origin pipeline, rank 64, MLP skipped|--rank 64 $ORIGIN $MLP"
  "origin pipeline, rank 128, every linear layer|--rank 128 $ORIGIN"
  "origin pipeline, rank 128, MLP skipped|--rank 128 $ORIGIN $MLP"
  "SVD rank 16 + per-row symmetric INT8 factors|--rank 16 --quant per-row --no-break-even-guard"
  "SVD rank 32 + per-row INT8|--rank 32 --quant per-row --no-break-even-guard"
  "SVD rank 64 + per-row INT8|--rank 64 --quant per-row --no-break-even-guard"
  "SVD rank 128 + per-row INT8|--rank 128 --quant per-row --no-break-even-guard"
  "no SVD: dense weights in per-row INT8|--method int8"
  "50% of linear params: one rank for all|--budget 0.5 --budget-mode uniform"
  "50%: same fraction of each matrix's params|--budget 0.5 --budget-mode proportional"
  "50%: global allocation by normalised singular-value energy|--budget 0.5 --budget-mode energy"
  "50% of bytes (INT8 factors vs f16 dense), energy allocation|--budget 0.5 --budget-unit bytes --budget-mode energy"
)

echo "# model $MODEL, text $TEXT, first $TOKENS tokens, windows of $WINDOW"
table="| configuration | linear params kept | ppl | cosine (per position, mean) | cosine (flattened) | MSE | top-1 | KL | compressed bytes (tensors) | resident bytes (measured) | layers |
|---|---|---|---|---|---|---|---|---|---|---|"
i=0
for row in "${rows[@]}"; do
  name=${row%%|*}; flags=${row#*|}
  dir="$OUT/$i"; i=$((i+1))
  echo "$SLC compress --input_dir $MODEL --output_dir DIR $flags"
  # shellcheck disable=SC2086
  $SLC compress --input_dir "$MODEL" --output_dir "$dir" $flags --json > "$dir.compress.json" 2>/dev/null
  $SLC eval --original "$MODEL" --compressed "$dir" --text "$TEXT" --tokens "$TOKENS" --window "$WINDOW" --json > "$dir.eval.json" 2>/dev/null
  table+=$'\n'$(python3 - "$name" "$dir.compress.json" "$dir.eval.json" <<'PY'
import json, sys
name, c, e = sys.argv[1], json.load(open(sys.argv[2])), json.load(open(sys.argv[3]))
t = c["totals"]
kept = t["params_after"] / max(1, t["params_considered"])
g = lambda x: f"{x:.4g}" if x >= 1000 else (f"{x:.2f}" if x >= 1 else f"{x:.4f}")
print(f"| {name} | {kept:.3f} | {g(e['ppl_compressed'])} | {e['cosine']:.4f} | {e['cosine_global']:.4f} | {g(e['mse'])} | {e['top1']:.3f} | {e['kl']:.3f} | {e['bytes_compressed']:,} | {e['resident_bytes_compressed']:,} | {e['layers_compressed']}/{e['layers_total']} |")
PY
)
done
echo "$SLC eval --original $MODEL --compressed DIR --text $TEXT --tokens $TOKENS --window $WINDOW --json"
echo
echo "$table"
python3 - "$OUT/0.eval.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
print(f"\noriginal perplexity {e['ppl_original']:.2f}; original tensors {e['bytes_original']:,} bytes; {e['convention']}")
PY
