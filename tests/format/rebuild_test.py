"""FORMAT.md's Python snippet, run against `slc densify` on compressed checkpoints of two models and every storage.

Run by `./build.sh test` when python3 has numpy and safetensors (build.sh setup installs them from PyPI)."""
import os, re, subprocess, sys, tempfile
import numpy as np
from safetensors.numpy import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLC = os.path.join(ROOT, "target", "release", "slc")
SHARED = os.path.join(ROOT, "..", "shared")

code = re.search(r"```python\n(.*?)```", open(os.path.join(ROOT, "FORMAT.md")).read(), re.S).group(1)
ns = {}
exec(code, ns)
rebuild_dense = ns["rebuild_dense"]

cases = [
    ("www/models/neo-bard-8l", ["--rank", "32"]),
    ("www/models/neo-bard-8l", ["--rank", "16", "--quant", "per-tensor", "--skip", "mlp.c_proj"]),
    ("www/models/neo-bard-8l", ["--method", "int8"]),
    ("www/models/neo-bard-8l", ["--method", "quant", "--bits", "4", "--group", "64"]),
    ("www/models/neo-bard-8l", ["--method", "quant", "--bits", "3", "--group", "48", "--skip", "attn"]),
    ("www/models/neo-bard-8l", ["--method", "gptq", "--bits", "2", "--group", "32", "--calibration-tokens", "256",
                                "--calibration-text", os.path.join(SHARED, "corpus/eval-dev.txt")]),
    (os.path.join(SHARED, "fixtures/tiny-gpt-neo-v512"), ["--rank", "8", "--quant_bits", "32"]),
    ("www/models/neo-bard-8l", ["--rank", "40", "--quant-bits", "4", "--group", "32"]),
]
with tempfile.TemporaryDirectory() as tmp:
    for i, (model, flags) in enumerate(cases):
        comp, dense = os.path.join(tmp, f"c{i}"), os.path.join(tmp, f"d{i}")
        subprocess.run([SLC, "compress", "--input_dir", os.path.join(ROOT, model), "--output_dir", comp, *flags],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run([SLC, "densify", "--model", comp, "--output_dir", dense], check=True, stdout=subprocess.DEVNULL)
        mine = rebuild_dense(os.path.join(comp, "model.safetensors"))
        ref = load_file(os.path.join(dense, "model.safetensors"))
        assert set(mine) == set(ref), sorted(set(mine) ^ set(ref))[:5]
        worst = 0.0
        for k, v in ref.items():
            a = mine[k].astype(np.float64)
            b = v.astype(np.float64)
            assert a.shape == b.shape, (k, a.shape, b.shape)
            worst = max(worst, float(np.abs(a - b).max()) / max(1e-12, float(np.abs(b).max())))
        assert worst < 1e-5, (model, flags, worst)
        print(f"{os.path.basename(model)} {' '.join(flags)}: {len(ref)} tensors rebuilt, max relative difference {worst:.2e}")
print("FORMAT.md snippet: ok")
