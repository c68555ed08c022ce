#!/usr/bin/env python3
"""train.precision side by side: fp32, bf16 (bf16 weights, fp32 masters) and bf16_autocast (fp32
weights, bf16 autocast forward) on the configs/demo_tiny.yaml job, one sftgo-train process each.

  bench/train/bench_precision.py [--build DIR] [--tokenizer DIR] [--threads 1] [--steps 12] [--repeats 2]

Tokens/s = non-padding tokens per second of optimizer steps (step 1, with its warm-up allocations,
excluded), peak RSS = the process's maximum resident set (/usr/bin/time %M). Runs alternate between
the precisions and each number is the median over the repeats; the ratios to fp32 are the result (the
machine may be shared). Same data, groups, seed and initial weights for all three.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ("fp32", "bf16", "bf16_autocast")


def load_peer():
    # The peer benchmark's runner: /usr/bin/time around sftgo-train, metrics.jsonl read back.
    spec = importlib.util.spec_from_file_location("bench_peer_train", ROOT / "bench/peer/bench_peer_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


PEER = load_peer()


def run(binary: Path, sets: list[str], run_dir: Path):
    r = PEER.run_sftgo(binary, sets, run_dir)
    tps, rss_mb = PEER.summarize(r)
    return tps, rss_mb, r["loss"][-1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--tokenizer", default=None, help="default: ../shared/data/llama3 if present, else data/demo/tokenizer")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()
    tok = Path(args.tokenizer) if args.tokenizer else ROOT.parent / "shared/data/llama3"
    extra = ["--set", "model.vocab_size=128256"]  # Llama-3's ids (configs/demo_tiny.yaml has the demo tokenizer's)
    if not (tok / "tokenizer.json").exists():
        tok = ROOT / "data/demo/tokenizer"
        extra = ["--set", "model.vocab_size=1408"]  # the demo tokenizer's ids
    binary = Path(args.build) / "bin/sftgo-train"
    results = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory(prefix="sftgo_precision_") as tmp:
        tmp = Path(tmp)
        sets = ["--set", f"tokenizer.path={tok}", "--set", f"train.max_steps={args.steps}",
                "--set", f"train.num_threads={args.threads}", "--set", f"data.cache_dir={tmp / 'cache'}",
                "--set", "train.log_every=1", "--set", "model.device=cpu", *extra]
        for rep in range(args.repeats):
            for prec in PRECISIONS:
                results[prec].append(run(binary, sets + ["--set", f"train.precision={prec}"], tmp / f"{prec}{rep}"))
    med = {p: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), v[0][2])
           for p, v in results.items()}
    print(f"configs/demo_tiny.yaml, tokenizer {tok}, {args.steps} steps, {args.threads} thread(s), "
          f"{args.repeats} alternating runs each (median)")
    print("| train.precision | tokens/s | vs fp32 | peak RSS | vs fp32 | loss at last step |\n|---|---|---|---|---|---|")
    for p, (tps, rss, loss) in med.items():
        print(f"| {p} | {tps:.0f} | {tps / med['fp32'][0]:.2f}x | {rss:.0f} MB | {rss / med['fp32'][1]:.2f}x | {loss:.4f} |")
    print(json.dumps({p: {"tokens_per_s": v[0], "peak_rss_mb": v[1]} for p, v in med.items()}))


if __name__ == "__main__":
    main()
