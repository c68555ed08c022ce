#!/usr/bin/env python3
"""Cost of step-wide group means: loss.scope microbatch vs step with loss.step_stats prepass vs speculate.

  bench/train/bench_step_stats.py [--build DIR] [--threads 1] [--steps 12] [--repeats 3] [--layers 4]
                                  [--hidden 256] [--micro 4] [--global 16]

One sftgo-train process per run on configs/demo_tiny.yaml's data and groups (demo tokenizer, V = 1408),
with a moderate model (--layers x --hidden) so that the model's forward, which the pre-pass repeats,
is most of a step. The machine this was written on is shared (load averages of 15 on 2 cores), so
wall-clock step times vary tenfold; the measure is the process's CPU seconds per step (utime + stime
from /proc, read as each metrics.jsonl line appears) over steps 2..N, on one thread (no OpenMP
spin-waiting). Step 1, with its warm-up allocations and the speculating run's pre-pass, is excluded;
a redone step's second pass is included. Redone steps = the speculating run's lost bets (its log's "step redone" lines).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "microbatch": ["loss.scope=microbatch"],
    "step prepass": ["loss.scope=step", "loss.step_stats=prepass"],
    "step speculate": ["loss.scope=step", "loss.step_stats=speculate"],
}


def cpu_seconds(pid: int) -> float:
    # utime + stime of every thread of the process (/proc/PID/stat fields 14 and 15), in seconds.
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(binary: Path, sets: list[str], run_dir: Path):
    cmd = [str(binary), "--config", "configs/demo_tiny.yaml"]
    for s in sets + [f"run.output_dir={run_dir}"]:
        cmd += ["--set", s]
    run_dir.mkdir(parents=True)
    metrics = run_dir / "metrics.jsonl"
    with open(run_dir / "log.txt", "w") as log:
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        marks = {}  # metrics lines written -> the process's CPU seconds when they were first seen
        while p.poll() is None:
            n = metrics.read_text().count("\n") if metrics.exists() else 0
            if n and n not in marks:
                try:
                    marks[n] = cpu_seconds(p.pid)
                except (FileNotFoundError, ProcessLookupError, IndexError):
                    pass
            time.sleep(0.01)
    out = (run_dir / "log.txt").read_text()
    if p.returncode != 0:
        raise SystemExit(f"sftgo-train failed:\n{out[-3000:]}")
    steps = [json.loads(l) for l in metrics.read_text().splitlines()]
    last = max(k for k in marks if k < len(steps)) if len(marks) > 1 else None
    cpu = (marks[last] - marks[1]) / (last - 1) if last and last > 1 else float("nan")
    return {"cpu_s_per_step": cpu, "loss": steps[-1]["loss"], "redone": len(re.findall(r"step redone", out))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--micro", type=int, default=4, help="train.micro_batch_size (examples)")
    ap.add_argument("--global", dest="global_batch", type=int, default=16, help="train.global_batch_size")
    args = ap.parse_args()
    binary = Path(args.build) / "bin/sftgo-train"
    shape = [f"model.num_layers={args.layers}", f"model.hidden_size={args.hidden}",
             f"model.intermediate_size={args.hidden * 11 // 4}", "model.num_heads=4", "model.num_kv_heads=2",
             f"train.micro_batch_size={args.micro}", f"train.global_batch_size={args.global_batch}",
             f"train.max_steps={args.steps}", f"train.num_threads={args.threads}", "train.save_final=false",
             "train.log_every=1", "model.device=cpu"]
    results = {k: [] for k in SETTINGS}
    with tempfile.TemporaryDirectory(prefix="sftgo_step_stats_") as tmp:
        tmp = Path(tmp)
        for rep in range(args.repeats):
            for name, sets in SETTINGS.items():
                results[name].append(run(binary, shape + [f"data.cache_dir={tmp / 'cache'}"] + sets,
                                         tmp / f"{name.replace(' ', '_')}{rep}"))
    med = {k: 1.0 / statistics.median(r["cpu_s_per_step"] for r in v) for k, v in results.items()}
    base = med["microbatch"]
    m = args.global_batch // args.micro
    print(f"demo data, {args.layers} layers x hidden {args.hidden}, {m} micro-batches of {args.micro}, "
          f"{args.steps} steps, {args.threads} threads, {args.repeats} alternating runs (median)")
    print("| setting | steps per CPU second | vs microbatch | steps redone | loss at last step |\n|---|---|---|---|---|")
    for k, v in results.items():
        redone = "/".join(str(r["redone"]) for r in v) if k == "step speculate" else "-"
        print(f"| {k} | {med[k]:.3f} | {med[k] / base:.2f}x | {redone} | {v[0]['loss']:.4f} |")
    print(json.dumps({k: {"steps_per_cpu_s": med[k], "runs": v} for k, v in results.items()}))


if __name__ == "__main__":
    main()
