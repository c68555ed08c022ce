"""ZeRO stages 1, 2 and 3 speed on the same 2-rank CPU job (issue #27): tokens/s per rank.

The job of bench_plan_memory.py (random llama3.2-1b shape cut to --layers layers and a --vocab
vocabulary, demo data packed to --seq tokens, Gloo, --threads LibTorch threads per rank) with --micro
micro-batches of one row per rank per step. With one micro-batch per rank stage 2 sends its buckets
during backward (over Gloo all-to-all: half a gradient per rank at 2 ranks) and stage 1 reduce-scatters
once after it (Gloo: an all-reduce of the whole gradient), so the ratio shows the overlap; with 2,
stage 2 exchanges every micro-batch (as many bytes as stage 1's all-reduce, sent while computing).
Stage 3 also gathers each decoder layer twice per micro-batch (forward and its recomputation in
backward; stage 3 always recomputes), so --ckpt-stages adds stage 1/2 runs with
model.activation_checkpointing=true: the recomputation's cost apart from the gathers'.

For each --micro value the variants (the --stages, then the --ckpt-stages with checkpointing) run
alternately, 1,2,3,1c,2c,1,2,3,... --repeats times each, so load drifts hit all alike. A run's speed is
the median of its steps' tokens_per_s after the first --warmup, per rank (the metrics count the global
batch). Reported: each variant's median over runs and its ratio to stage 1's median (and the median of
the per-repetition ratios). The machine may be shared: the load average is printed with each run, and
a "least disturbed" rate is added: for each step index the fastest of the variant's runs (every run
and stage trains the same tokens at a step), total tokens over the sum of those times, per rank. It
favours a variant whose run alone caught a quiet minute: read it only where the load stayed steady.

Usage: .venv/bin/python bench/dist/bench_zero2_speed.py [--bin PATH] [--layers 2] [--steps 5]
         [--repeats 3] [--stages 1,2,3] [--micro 1,2] [--ckpt-stages 1,2] [--ckpt-micro 1] [--json OUT]
(`--stages 1,2 --micro 2 --ckpt-stages ''` is the former stage 1 vs 2 benchmark.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan_memory import ROOT, free_port  # noqa: E402


def ints(text):
    return [int(x) for x in text.split(",") if x.strip()]


def variants(a, micro):
    """The variants run for one micro-batch count: (name, stage, activation checkpointing)."""
    ckpt = a.ckpt_stages if a.ckpt_micro is None or micro in a.ckpt_micro else []
    return [(f"zero{s}", s, False) for s in a.stages] + [(f"zero{s}+ckpt", s, True) for s in ckpt]


def run(binary, run_dir, a, stage, micro, ckpt):
    s = {"tokenizer.path": ROOT / "data/demo/tokenizer", "data.path": ROOT / "data/demo/demo_sft.jsonl",
         "data.packing": "true", "data.max_seq_len": a.seq, "data.cache_dir": "", "model.device": "cpu",
         "model.preset": "llama3.2-1b", "model.num_layers": a.layers, "model.vocab_size": a.vocab,
         "model.activation_checkpointing": str(ckpt).lower(),
         "grouping.function": "none", "loss.objective": "ce", "dist.zero": stage, "train.max_steps": a.steps,
         "train.global_batch_size": a.ranks * micro, "train.micro_batch_size": 1, "train.log_every": 1,
         "train.num_threads": a.threads, "train.save_every": 0, "train.save_final": "false",
         "run.output_dir": run_dir}
    s.update(kv.split("=", 1) for kv in a.set)
    cmd = ["mpirun", "-np", str(a.ranks), "--oversubscribe", "--bind-to", "none",
           "-x", f"MASTER_PORT={free_port()}", "-x", f"OMP_NUM_THREADS={a.threads}"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    cmd += [str(binary), "--config", str(ROOT / "configs/demo_tiny.yaml")]
    cmd += [x for k, v in s.items() for x in ("--set", f"{k}={v}")]
    t0 = time.monotonic()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=a.timeout)
    except subprocess.TimeoutExpired as e:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        raise SystemExit(f"{' '.join(cmd)}\ntimed out after {a.timeout} s (deadlock?):\n{err[-3000:]}")
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{p.stderr[-3000:]}")
    m = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"step"' in l]
    m = [x for x in m if "tokens_per_s" in x][a.warmup:]
    if not m:
        raise SystemExit(f"{run_dir}: no step after the {a.warmup} warm-up step(s); raise --steps")
    comm = [x["comm_s"] for x in m if x.get("comm_s") is not None]
    return {"tokens_per_s_per_rank": statistics.median(x["tokens_per_s"] for x in m) / a.ranks,
            "step_s": statistics.median(x["step_s"] for x in m),
            "comm_s": statistics.median(comm) if comm else None,
            "steps_s": [x["step_s"] for x in m], "steps_tokens": [x["tokens"] for x in m],
            "wall_s": time.monotonic() - t0}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="build directory whose bin/sftgo-train runs (unless --bin)")
    ap.add_argument("--bin", default=None, help="the sftgo-train binary (copy it away from a tree being rebuilt)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1, help="first steps of each run left out")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run (repeatable), e.g. dist.bucket_mb=100")
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="per rank")
    ap.add_argument("--stages", type=ints, default=[1, 2, 3], help="comma list; the first is the reference")
    ap.add_argument("--micro", type=ints, default=[1, 2], help="micro-batches per rank per step, comma list")
    ap.add_argument("--ckpt-stages", type=ints, default=[1, 2],
                    help="stages also run with model.activation_checkpointing=true ('' for none)")
    ap.add_argument("--ckpt-micro", type=ints, default=None,
                    help="the --micro values that run the --ckpt-stages (default: every one)")
    ap.add_argument("--timeout", type=float, default=900, help="seconds one run may take")
    ap.add_argument("--json", default=None, help="write every run and the summary here")
    a = ap.parse_args()
    binary = Path(a.bin).resolve() if a.bin else (ROOT / a.build / "bin/sftgo-train").resolve()
    print(f"binary {binary}; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    runs, summary = [], []
    with tempfile.TemporaryDirectory(prefix="sftgo_zero_speed_") as tmp:
        for micro in a.micro:
            vs = variants(a, micro)
            speeds = {name: [] for name, _, _ in vs}
            steps = {name: [] for name, _, _ in vs}
            least = {name: [] for name, _, _ in vs}  # per step index: (tokens, fastest step_s over runs)
            for i in range(a.repeats):
                for name, stage, ckpt in vs:
                    r = run(binary, f"{tmp}/m{micro}_{name}_{i}", a, stage, micro, ckpt)
                    r.update(micro=micro, variant=name, repeat=i, load=os.getloadavg()[0])
                    runs.append(r)
                    speeds[name].append(r["tokens_per_s_per_rank"])
                    steps[name].append(r["step_s"])
                    prev = [t for _, t in least[name]]
                    least[name] = [(n, min([t] + prev[j:j + 1])) for j, (n, t)
                                   in enumerate(zip(r["steps_tokens"], r["steps_s"]))]
                    comm = f", comm {r['comm_s']:.2f} s" if r["comm_s"] is not None else ""
                    print(f"micro {micro} run {i} {name}: {r['tokens_per_s_per_rank']:.1f} tokens/s per rank "
                          f"(step {r['step_s']:.2f} s{comm}; {r['wall_s']:.0f} s wall), "
                          f"load average {r['load']:.2f}", flush=True)
            ref = vs[0][0]
            # Least disturbed: each step index's fastest run (the same tokens in every run and stage).
            best = {name: sum(n for n, _ in least[name]) / sum(t for _, t in least[name]) / a.ranks
                    for name in least}
            for name, _, _ in vs:
                med = statistics.median(speeds[name])
                per_rep = statistics.median(x / y for x, y in zip(speeds[name], speeds[ref]))
                summary.append({"micro": micro, "variant": name, "tokens_per_s_per_rank": med,
                                "runs": speeds[name], "step_s": statistics.median(steps[name]),
                                "ratio": med / statistics.median(speeds[ref]), "ratio_per_repeat_median": per_rep,
                                "least_disturbed_tokens_per_s_per_rank": best[name],
                                "least_disturbed_ratio": best[name] / best[ref]})
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"| variant | micro-batches per rank | tokens/s per rank (median; runs) | / zero{a.stages[0]} "
          f"| median of per-repeat ratios | step s (median) | tokens/s per rank, each step's fastest run (ratio) |"
          f"\n|---|---|---|---|---|---|---|")
    for s in summary:
        runs_txt = ", ".join(f"{x:.1f}" for x in s["runs"])
        print(f"| {s['variant']} | {s['micro']} | {s['tokens_per_s_per_rank']:.1f} ({runs_txt}) "
              f"| {s['ratio']:.3f} | {s['ratio_per_repeat_median']:.3f} | {s['step_s']:.2f} "
              f"| {s['least_disturbed_tokens_per_s_per_rank']:.1f} ({s['least_disturbed_ratio']:.3f}) |")
    if a.json:
        Path(a.json).write_text(json.dumps({"binary": str(binary), "runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
