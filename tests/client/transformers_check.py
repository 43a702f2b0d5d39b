#!/usr/bin/env python3
"""A real client reads our output: `slc densify` of a compressed checkpoint, loaded by Hugging Face transformers,
continues a prompt exactly as `slc generate` does on the compressed checkpoint, and its perplexity on eval-dev.txt
equals `slc eval`'s for the compressed model (same tokens, windows and convention).

    python3 tests/client/transformers_check.py [--tokens 2048] [--window 512]

Needs torch and transformers (`pip install torch transformers`; large, so not part of CI) and a built
target/release/slc. Exits non-zero on any disagreement.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SLC = os.path.join(ROOT, "target", "release", "slc")
DEMO = os.path.join(ROOT, "www", "models", "neo-bard-8l")
TEXT = os.path.join(ROOT, "www", "data", "eval-dev.txt")
PROMPTS = ["ROMEO. O my love,", "The meaning of life is"]


def slc(*args):
    return subprocess.run([SLC, *args], check=True, capture_output=True, text=True).stdout


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--window", type=int, default=512)
    args = ap.parse_args()
    import torch
    import transformers
    from tokenizers import Tokenizer

    torch.set_grad_enabled(False)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        comp, dense = os.path.join(tmp, "compressed"), os.path.join(tmp, "dense")
        policies = {
            "rank 32, MLP skipped, per-row INT8": ["--rank", "32", "--skip", "mlp.c_fc", "--skip", "mlp.c_proj"],
            "rank 16, every layer, origin per-tensor INT8": ["--rank", "16", "--quant", "per-tensor", "--no-break-even-guard"],
        }
        for label, flags in policies.items():
            for d in (comp, dense):
                subprocess.run(["rm", "-rf", d], check=True)
            slc("compress", "--input_dir", DEMO, "--output_dir", comp, *flags)
            slc("densify", "--model", comp, "--output_dir", dense)
            model = transformers.GPTNeoForCausalLM.from_pretrained(dense, dtype=torch.float32).eval()
            tok = Tokenizer.from_file(os.path.join(dense, "tokenizer.json"))
            for prompt in PROMPTS:
                ours = json.loads(slc("generate", "--model", comp, "--prompt", prompt, "--max-new-tokens", "30", "--json"))
                ids = torch.tensor([tok.encode(prompt).ids])
                out = model.generate(ids, max_new_tokens=30, do_sample=False, pad_token_id=model.config.eos_token_id)
                theirs = out[0, ids.shape[1]:].tolist()
                same = theirs == ours["ids"]
                print(f"{label}, {prompt!r}: transformers {'=' if same else '≠'} slc generate: {tok.decode(theirs)!r}")
                if not same:
                    failures.append(f"{label}, {prompt!r}: transformers {theirs} vs slc {ours['ids']}")
            ev = json.loads(slc("eval", "--original", DEMO, "--compressed", comp, "--text", TEXT,
                                "--tokens", str(args.tokens), "--window", str(args.window), "--json"))
            text_ids = tok.encode(open(TEXT, encoding="utf-8").read()).ids[: args.tokens]
            nll, n = 0.0, 0
            for a in range(0, len(text_ids), args.window):
                w = text_ids[a : a + args.window]
                if len(w) < 2:
                    continue
                logits = model(torch.tensor([w])).logits[0].double()
                logp = torch.log_softmax(logits, dim=-1)
                nll -= logp[torch.arange(len(w) - 1), torch.tensor(w[1:])].sum().item()
                n += len(w) - 1
            ppl = math.exp(nll / n)
            rel = abs(ppl / ev["ppl_compressed"] - 1)
            print(f"{label}: perplexity on {n} predictions — transformers {ppl:.6g}, slc eval {ev['ppl_compressed']:.6g} (relative difference {rel:.1e})")
            if n != ev["predictions"] or rel > 1e-5:
                failures.append(f"{label}: perplexity {ppl} over {n} vs slc {ev['ppl_compressed']} over {ev['predictions']}")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}")
    if failures:
        print("FAILED:\n" + "\n".join(failures))
        sys.exit(1)
    print("transformers agrees with slc on every check")


if __name__ == "__main__":
    main()
