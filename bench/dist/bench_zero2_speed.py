"""ZeRO-2 against ZeRO-1 speed on the same 2-rank CPU job (issue #27): tokens/s per rank.

The job of bench_plan_memory.py (random llama3.2-1b shape cut to --layers layers and a --vocab
vocabulary, demo data packed to --seq tokens, Gloo, one LibTorch thread per rank) with 2 micro-batches
of one row per rank per step, so stage 2 reduces every micro-batch during backward while stage 1
reduce-scatters once per step. The stages run alternately, --repeats times each; a run's speed is the
median of its steps' tokens_per_s after the first (warm-up), per rank (the metrics count the global
batch). Reported: each stage's median over runs and the ratio zero2 / zero1. The machine may be shared:
the load average is printed, and the ratio of alternating runs is the number that counts.

Usage: .venv/bin/python bench/dist/bench_zero2_speed.py [--layers 2] [--steps 5] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan_memory import ROOT, free_port  # noqa: E402


def run(binary, run_dir, a, stage):
    s = {"tokenizer.path": ROOT / "data/demo/tokenizer", "data.path": ROOT / "data/demo/demo_sft.jsonl",
         "data.packing": "true", "data.max_seq_len": a.seq, "data.cache_dir": "", "model.device": "cpu",
         "model.preset": "llama3.2-1b", "model.num_layers": a.layers, "model.vocab_size": a.vocab,
         "grouping.function": "none", "loss.objective": "ce", "dist.zero": stage, "train.max_steps": a.steps,
         "train.global_batch_size": 4, "train.micro_batch_size": 1, "train.log_every": 1,
         "train.num_threads": max(1, os.cpu_count() // 2), "train.save_every": 0, "train.save_final": "false",
         "run.output_dir": run_dir}
    cmd = ["mpirun", "-np", "2", "--oversubscribe", "--bind-to", "none", "-x", f"MASTER_PORT={free_port()}"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [str(binary), "--config", str(ROOT / "configs/demo_tiny.yaml")]
    cmd += [x for k, v in s.items() for x in ("--set", f"{k}={v}")]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{p.stderr[-3000:]}")
    m = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"step"' in l]
    return statistics.median(x["tokens_per_s"] for x in m[1:]) / 2  # per rank


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    binary = (ROOT / a.build / "bin/sftgo-train").resolve()
    speeds = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="sftgo_zero2_speed_") as tmp:
        for i in range(a.repeats):
            for stage in (1, 2):
                speeds[stage].append(run(binary, f"{tmp}/z{stage}_{i}", a, stage))
                print(f"run {i} zero{stage}: {speeds[stage][-1]:.1f} tokens/s per rank, "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)
    z1, z2 = statistics.median(speeds[1]), statistics.median(speeds[2])
    print(f"median zero1 {z1:.1f}, zero2 {z2:.1f} tokens/s per rank; zero2 / zero1 = {z2 / z1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
