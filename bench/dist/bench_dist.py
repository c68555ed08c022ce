"""Data-parallel scaling of sftgo-train on CPU with Gloo: 1 rank vs 2 ranks (mpirun), same global
batch, one LibTorch thread per rank, so 2 ranks use twice the cores of 1 rank and

    scaling efficiency = tokens/s (2 ranks) / (2 x tokens/s (1 rank)).

Validates before it times: the 2-rank run's final weights must equal the 1-rank run's (same
examples per step; gradients summed across ranks) to 5e-5, as in tests/python/test_dist_mpirun.py.
Throughput is the median of the per-step tokens/s in metrics.jsonl after the first 2 steps.

--memory instead measures the peak RSS of each rank (bf16 precision, a larger model, 2 steps) for
plain data parallel and ZeRO-1 and compares it with the accounting of docs/architecture.md:
per rank, plain = 20P bytes (+2P of all-reduce buckets when W > 1), ZeRO-1 = 4P + 14P/W.

Usage: .venv/bin/python bench/dist/bench_dist.py [--steps 30] [--build build] [--hidden 256 --layers 4]
       .venv/bin/python bench/dist/bench_dist.py --memory [--hidden 768 --layers 8]
"""
import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(binary, run_dir, ranks, threads, a, extra=(), rss=False):
    sets = {"tokenizer.path": ROOT / "data/demo/tokenizer", "model.vocab_size": 1408, "model.hidden_size": a.hidden,
            "model.intermediate_size": 4 * a.hidden, "model.num_layers": a.layers, "model.num_heads": max(1, a.hidden // 64),
            "model.num_kv_heads": max(1, a.hidden // 64),
            "run.output_dir": run_dir, "train.max_steps": a.steps, "data.cache_dir": "", "model.device": "cpu",
            "train.num_threads": threads, "train.global_batch_size": a.batch, "train.micro_batch_size": a.micro,
            "train.log_every": 1000, "train.save_every": 0}
    cmd = [str(binary), "--config", str(ROOT / "configs/demo_tiny.yaml")]
    if rss:  # peak RSS of each rank, written by GNU time into run_dir/rss.<pid>
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        cmd = ["sh", "-c", f'exec /usr/bin/time -f %M -o {run_dir}/rss.$$ "$@"', "sh"] + cmd
    for k, v in list(sets.items()) + [tuple(e.split("=", 1)) for e in extra]:
        cmd += ["--set", f"{k}={v}"]
    if ranks > 1:
        mpi = ["mpirun", "-np", str(ranks), "--oversubscribe", "--bind-to", "none", "-x", f"MASTER_PORT={free_port()}"]
        if os.geteuid() == 0:
            mpi.insert(1, "--allow-run-as-root")
        cmd = mpi + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{p.stderr[-3000:]}")
    if rss:
        return [int(f.read_text().split()[-1]) * 1024 for f in Path(run_dir).glob("rss.*")]
    lines = [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"step"' in l]
    tps = statistics.median(l["tokens_per_s"] for l in lines[2:])
    step_s = statistics.median(l["step_s"] for l in lines[2:])
    comm_s = statistics.median(l.get("comm_s", 0.0) for l in lines[2:])
    return tps, step_s, comm_s


def final_weights(run_dir):
    from safetensors.numpy import load_file
    ck = sorted((Path(run_dir) / "checkpoints").glob("step_*"))[-1]
    return load_file(str(ck / "model.safetensors"))


def memory(binary, tmp, a):
    common = ["train.precision=bf16"]
    a.steps = 2
    rows = [("1 rank, plain", 1, []), ("2 ranks, plain data parallel", 2, []), ("2 ranks, ZeRO-1", 2, ["dist.zero1=true"])]
    out = {}
    for name, ranks, extra in rows:
        out[name] = max(run(binary, tmp / f"m{len(out)}", ranks, 1, a, common + extra, rss=True))
    # Parameter count from the safetensors header (numpy cannot load bf16 tensors).
    ck = sorted((tmp / "m0" / "checkpoints").glob("step_*"))[-1]
    raw = (ck / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    p = sum(math.prod(v["shape"]) for k, v in header.items() if k != "__metadata__")
    plain1, plain2, zero2 = out[rows[0][0]], out[rows[1][0]], out[rows[2][0]]
    print(f"model: hidden {a.hidden}, {a.layers} layers, P = {p / 1e6:.1f}M parameters, precision bf16; peak RSS per rank")
    print(f"{'configuration':34s} {'peak RSS':>10s}")
    for name, _, _ in rows:
        print(f"{name:34s} {out[name] / 2**20:8.0f} MB")
    print(f"plain 2 ranks - ZeRO-1 2 ranks: measured {(plain2 - zero2) / 2**20:.0f} MB, predicted "
          f"(20P + 2P) - (4P + 14P/2) = 11P = {11 * p / 2**20:.0f} MB")
    print(f"plain 2 ranks - plain 1 rank (all-reduce buckets): measured {(plain2 - plain1) / 2**20:.0f} MB, "
          f"predicted 2P = {2 * p / 2**20:.0f} MB")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("SFTGO_BUILD_DIR", str(ROOT / "build")))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--memory", action="store_true")
    a = ap.parse_args()
    binary = Path(a.build) / "bin" / "sftgo-train"
    tmp = Path(tempfile.mkdtemp(prefix="bench_dist_"))
    try:
        if a.memory:
            memory(binary, tmp, a)
            return
        load_before = os.getloadavg()[0]
        rows = []
        base, *t = run(binary, tmp / "r1", 1, 1, a)
        rows.append(("1 rank x 1 thread", base, None, t))
        two, *t2 = run(binary, tmp / "r2", 2, 1, a)
        import numpy as np
        w1, w2 = final_weights(tmp / "r1"), final_weights(tmp / "r2")
        diff = max(float(np.abs(w1[k].astype(np.float64) - w2[k]).max()) for k in w1)
        if diff > 5e-5:
            raise SystemExit(f"validation failed: 2-rank weights differ from 1-rank weights by {diff:.3g}")
        rows.append(("2 ranks x 1 thread (Gloo, 25 MiB buckets)", two, two / (2 * base), t2))
        small, *t = run(binary, tmp / "r2s", 2, 1, a, ["dist.bucket_mb=0.25"])
        rows.append(("2 ranks x 1 thread (Gloo, 0.25 MiB buckets)", small, small / (2 * base), t))
        zero, *t = run(binary, tmp / "r2z", 2, 1, a, ["dist.zero1=true"])
        rows.append(("2 ranks x 1 thread (Gloo, ZeRO-1)", zero, zero / (2 * base), t))
        thr, *t = run(binary, tmp / "r1t", 1, 2, a)
        rows.append(("1 rank x 2 threads (same cores as 2 ranks)", thr, thr / (2 * base), t))
        n_params = sum(v.size for v in w1.values())
        print(f"model: hidden {a.hidden}, {a.layers} layers, {n_params / 1e6:.2f}M parameters; global batch {a.batch}, "
              f"micro-batch {a.micro}; {a.steps} steps; validation: max |w(2 ranks) - w(1 rank)| = {diff:.2g}")
        print(f"load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (on {os.cpu_count()} cores; "
              "other processes share them)")
        print(f"{'configuration':48s} {'tokens/s':>10s} {'efficiency':>11s} {'step s':>8s} {'comm s':>8s}")
        for name, tps, eff, (step_s, comm_s) in rows:
            print(f"{name:48s} {tps:10.0f} {'' if eff is None else f'{100 * eff:10.1f}%':>11s} {step_s:8.3f} {comm_s:8.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
