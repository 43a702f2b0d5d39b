#!/usr/bin/env bash
# Reproduce every table of QUALITY.md with the CLI, print them, and check each row against the figures QUALITY.md
# publishes: exits non-zero if any figure moved beyond the rounding of its printed digits. Run it before QUALITY.md is
# updated. (The Python reference rows are also checked in CI, natively: tests/compression.rs.)
#   tests/quality/reproduce.sh [MODEL_DIR] [TEXT]
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=${1:-www/models/neo-bard-8l}
TEXT=${2:-www/data/eval-dev.txt}
SLC=target/release/slc
[ -x "$SLC" ] || cargo build --release --bin slc >&2
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
MLP="--skip mlp.c_fc --skip mlp.c_proj"
ORIGIN="--quant per-tensor --no-break-even-guard"
CAL="--calibration-text $TEXT --calibration-tokens 4096"
FIRST="--tokens 8192 --window 512"
HELD_OUT="--skip-tokens 4096 --tokens 8192 --window 512"

# name | compress flags | eval flags
rows=(
  "origin pipeline, rank 16, every linear layer|--rank 16 $ORIGIN|$FIRST"
  "origin pipeline, rank 16, MLP skipped|--rank 16 $ORIGIN $MLP|$FIRST"
  "origin pipeline, rank 32, every linear layer|--rank 32 $ORIGIN|$FIRST"
  "origin pipeline, rank 32, MLP skipped|--rank 32 $ORIGIN $MLP|$FIRST"
  "origin pipeline, rank 64, every linear layer|--rank 64 $ORIGIN|$FIRST"
  "origin pipeline, rank 64, MLP skipped|--rank 64 $ORIGIN $MLP|$FIRST"
  "origin pipeline, rank 128, every linear layer|--rank 128 $ORIGIN|$FIRST"
  "origin pipeline, rank 128, MLP skipped|--rank 128 $ORIGIN $MLP|$FIRST"
  "SVD rank 16 + per-row symmetric INT8 factors|--rank 16 --quant per-row --no-break-even-guard|$FIRST"
  "SVD rank 32 + per-row INT8|--rank 32 --quant per-row --no-break-even-guard|$FIRST"
  "SVD rank 64 + per-row INT8|--rank 64 --quant per-row --no-break-even-guard|$FIRST"
  "SVD rank 128 + per-row INT8|--rank 128 --quant per-row --no-break-even-guard|$FIRST"
  "no SVD: dense weights in per-row INT8|--method int8|$FIRST"
  "50% of linear params: one rank for all|--budget 0.5 --budget-mode uniform|$FIRST"
  "50%: same fraction of each matrix's params|--budget 0.5 --budget-mode proportional|$FIRST"
  "50%: global allocation by normalised singular-value energy|--budget 0.5 --budget-mode energy|$FIRST"
  "50% of bytes (INT8 factors vs f16 dense), energy allocation|--budget 0.5 --budget-unit bytes --budget-mode energy|$FIRST"
  "plain SVD, rank 32, every linear layer|--rank 32 --method svd|$HELD_OUT"
  "activation-aware, rank 32, every linear layer|--rank 32 --method whitened $CAL|$HELD_OUT"
  "plain SVD, rank 32, MLP skipped|--rank 32 --method svd $MLP|$HELD_OUT"
  "activation-aware, rank 32, MLP skipped|--rank 32 --method whitened $CAL $MLP|$HELD_OUT"
  "plain SVD, 50% of linear params (energy allocation)|--budget 0.5 --method svd|$HELD_OUT"
  "activation-aware, 50% of linear params (energy allocation)|--budget 0.5 --method whitened $CAL|$HELD_OUT"
)

i=0
for row in "${rows[@]}"; do
  IFS='|' read -r name cflags eflags <<<"$row"
  dir="$OUT/$i"
  echo "$SLC compress --input_dir $MODEL --output_dir DIR $cflags" >&2
  # shellcheck disable=SC2086
  $SLC compress --input_dir "$MODEL" --output_dir "$dir" $cflags --json > "$dir.compress.json"
  # shellcheck disable=SC2086
  $SLC eval --original "$MODEL" --compressed "$dir" --text "$TEXT" $eflags --json > "$dir.eval.json"
  printf '%s\n' "$name" > "$dir.name"
  i=$((i+1))
done
echo "$SLC eval --original $MODEL --compressed DIR --text $TEXT [--skip-tokens 4096] --tokens 8192 --window 512 --json" >&2

python3 - "$OUT" "$i" QUALITY.md <<'PY'
import json, re, sys
out, n, quality = sys.argv[1], int(sys.argv[2]), open(sys.argv[3], encoding="utf-8").read()
g = lambda x: f"{x:.4g}" if x >= 1000 else (f"{x:.2f}" if x >= 1 else f"{x:.4f}")
published = {}
for line in quality.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) > 5 and not cells[0].startswith(("configuration", "---")):
        published.setdefault(cells[0], cells)
def num(s):
    return float(s.replace(",", "").replace("e+0", "e").replace("e+", "e"))
failures = []
print("| configuration | linear params kept | ppl | cosine (per position) | cosine (flattened) | MSE | top-1 | KL | compressed tensor bytes | resident bytes (measured) | layers |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for k in range(n):
    name = open(f"{out}/{k}.name").read().strip()
    c, e = json.load(open(f"{out}/{k}.compress.json")), json.load(open(f"{out}/{k}.eval.json"))
    t = c["totals"]
    kept = t["params_after"] / max(1, t["params_considered"])
    print(f"| {name} | {kept:.3f} | {g(e['ppl_compressed'])} | {e['cosine']:.4f} | {e['cosine_global']:.4f} | {g(e['mse'])} | {e['top1']:.3f} | {e['kl']:.3f} | {e['bytes_compressed']:,} | {e['resident_bytes_compressed']:,} | {e['layers_compressed']}/{e['layers_total']} |")
    row = published.get(name)
    if row is None:
        failures.append(f"{name}: not in QUALITY.md")
        continue
    if len(row) >= 13:  # the first table: kept, ppl, ppl ref, cosine, cosine ref, flat, MSE, top-1, KL, bytes, resident
        want = {"ppl": row[2], "cosine": row[4], "cosine_global": row[6], "mse": row[7], "top1": row[8], "kl": row[9], "bytes": row[10], "resident": row[11]}
    else:  # the activation-aware table: ppl, cosine, flat, top-1, KL, bytes
        want = {"ppl": row[1], "cosine": row[2], "cosine_global": row[3], "top1": row[4], "kl": row[5], "bytes": row[6]}
    got = {"ppl": e["ppl_compressed"], "cosine": e["cosine"], "cosine_global": e["cosine_global"], "mse": e["mse"],
           "top1": e["top1"], "kl": e["kl"], "bytes": e["bytes_compressed"], "resident": e["resident_bytes_compressed"]}
    for key, text in want.items():
        w = num(text)
        digits = text.replace(",", "").split("e")[0]
        decimals = len(digits.split(".")[1]) if "." in digits else 0
        exp = int(text.split("e")[1]) if "e" in text else 0
        half = 0.5 * 10 ** (exp - decimals) + 1e-12
        if abs(got[key] - w) > half:
            failures.append(f"{name}: {key} {got[key]} vs QUALITY.md {text}")
o = json.load(open(f"{out}/0.eval.json"))
print(f"\noriginal perplexity {o['ppl_original']:.2f}; original tensors {o['bytes_original']:,} bytes; {o['convention']}")
if failures:
    print("\nQUALITY.md does not hold:\n" + "\n".join(failures), file=sys.stderr)
    sys.exit(1)
print(f"\nevery figure of the {n} rows equals QUALITY.md's to its printed digits")
PY
