"""Peak RSS per rank of sftgo-train on CPU against the memory planner's prediction (issue #27).

A random model large enough for the state to dominate (default: the llama3.2-1b shape cut to 4 layers
and a 16,384-token vocabulary, 277M parameters) trains `--steps` optimizer steps on the demo data,
packed to `--seq` tokens, one micro-batch of one row per rank per step, at 1 and 2 ranks (mpirun, one
LibTorch thread per core), plain data parallel, ZeRO-1 and ZeRO-2, fp32 and bf16 (fp32 master weights). Each
rank's peak RSS comes from GNU time. LibTorch's own footprint (libraries, allocator, Gloo, TCPStore)
is not in the planner: it is measured by the same command on the `tiny` preset (vocabulary 1,408,
0.2M parameters) at the same rank count, and subtracted. The prediction is
`sftgo-train plan --json` for the same config and rank count: the total of the row the config runs
(ddp, zero1 or zero2). The ratio measured / predicted must lie within 1 +- 0.15.

At least 2 steps are needed: AdamW allocates its moments at the first step, so the step-2 forward is
the first one with the whole state resident.

Usage: .venv/bin/python bench/dist/bench_plan_memory.py [--layers 4] [--vocab 16384] [--ranks 1,2]
       [--cases fp32:ddp,fp32:zero1,fp32:zero2,bf16:ddp,bf16:zero1,bf16:zero2] [--json OUT.json]
"""
import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.15  # issue #27: measured within 15% of the planner's prediction


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


STAGES = {"ddp": 0, "zero1": 1, "zero2": 2}  # the row -> dist.zero


def settings(a, ranks, precision, stage, tiny):
    s = {"tokenizer.path": ROOT / "data/demo/tokenizer", "data.path": ROOT / "data/demo/demo_sft.jsonl",
         "data.packing": "true", "data.max_seq_len": a.seq, "data.cache_dir": "", "model.device": "cpu",
         "grouping.function": "none", "loss.objective": "ce", "train.precision": precision,
         "dist.zero": stage, "train.max_steps": a.steps, "train.global_batch_size": ranks,
         "train.micro_batch_size": 1, "train.num_threads": max(1, os.cpu_count() // ranks), "train.log_every": 1,
         "train.save_every": 0, "train.save_final": "false"}
    if tiny:
        s.update({"model.preset": "tiny", "model.vocab_size": 1408})
    else:
        s.update({"model.preset": "llama3.2-1b", "model.num_layers": a.layers, "model.vocab_size": a.vocab})
    return [x for k, v in s.items() for x in ("--set", f"{k}={v}")]


def peak_rss(binary, run_dir, ranks, sets):
    """Peak RSS (bytes) of each rank."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = ["sh", "-c", f'exec /usr/bin/time -f %M -o {run_dir}/rss.$$ "$@"', "sh", str(binary),
           "--config", str(ROOT / "configs/demo_tiny.yaml"), "--set", f"run.output_dir={run_dir}"] + sets
    if ranks > 1:
        mpi = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", "-x", f"MASTER_PORT={free_port()}"]
        if os.geteuid() == 0:
            mpi.insert(1, "--allow-run-as-root")
        cmd = mpi + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{p.stderr[-3000:]}")
    rss = [int(f.read_text().split()[-1]) * 1024 for f in run_dir.glob("rss.*")]
    assert len(rss) == ranks, rss
    return rss


def predicted(binary, ranks, sets):
    cmd = [str(binary), "plan", "--config", str(ROOT / "configs/demo_tiny.yaml"), "--gpus", str(ranks), "--json"] + sets
    plan = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    row = next(r for r in plan["choices"] if r["current"])
    return row, plan["total_params"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=16384)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--ranks", default="1,2")
    ap.add_argument("--cases", default="fp32:ddp,fp32:zero1,fp32:zero2,bf16:ddp,bf16:zero1,bf16:zero2")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    binary = (ROOT / a.build / "bin/sftgo-train").resolve()
    rows, failed = [], False
    with tempfile.TemporaryDirectory(prefix="sftgo_plan_mem_") as tmp:
        tmp = Path(tmp)
        for ranks in [int(r) for r in a.ranks.split(",")]:
            base = max(peak_rss(binary, tmp / f"base{ranks}", ranks, settings(a, ranks, "fp32", 0, True)))
            for case in a.cases.split(","):
                precision, choice = case.split(":")
                sets = settings(a, ranks, precision, STAGES[choice], False)
                row, n = predicted(binary, ranks, sets)
                assert row["choice"] == choice, row
                peak = max(peak_rss(binary, tmp / f"{case.replace(':', '_')}{ranks}", ranks, sets))
                ratio = (peak - base) / row["device_total"]
                failed |= abs(ratio - 1) > TOLERANCE
                rows.append({"ranks": ranks, "precision": precision, "choice": choice, "params": n,
                             "peak_rss": peak, "baseline_rss": base, "measured": peak - base,
                             "predicted": row["device_total"], "ratio": ratio,
                             "predicted_parts": {k: row[k] for k in ("weights", "gradients", "masters", "moments",
                                                                     "comm", "activations")}})
                print(f"{ranks} rank(s) {precision:5s} {choice:6s}: peak {peak / 1e9:6.2f} GB - baseline "
                      f"{base / 1e9:5.2f} GB = {(peak - base) / 1e9:6.2f} GB, planner {row['device_total'] / 1e9:6.2f} GB,"
                      f" ratio {ratio:5.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    print(f"P = {rows[0]['params'] / 1e6:.1f}M parameters; all within {TOLERANCE:.0%}: {not failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
