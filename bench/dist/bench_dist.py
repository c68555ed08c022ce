"""Data-parallel scaling of sftgo-train on CPU with Gloo: 1 rank vs 2 ranks (mpirun), same global
batch, one LibTorch thread per rank, so 2 ranks use twice the cores of 1 rank and

    scaling efficiency = tokens/s (2 ranks) / (2 x tokens/s (1 rank)).

Validates before it times: the 2-rank run's final weights must equal the 1-rank run's (same
examples per step; gradients summed across ranks) to 5e-5, as in tests/python/test_dist_mpirun.py.
Throughput is the median of the per-step tokens/s in metrics.jsonl after the first 2 steps.

--memory instead measures the peak RSS of each rank (bf16 precision, a larger model, 2 steps) for
plain data parallel and ZeRO-1 and compares it with the accounting of docs/architecture.md:
per rank, plain = 20P bytes (W > 1: the bf16 gradients are views of the all-reduce buckets, no extra
2P), ZeRO-1 = 4P + 14P/W.

--baseline DIR compares this build with another one (DIR/bin/sftgo-train, e.g. a copy of the binary
from before a change) side by side: the same configurations alternate between the two binaries
--repeat times and each row reports the median. With --memory it compares peak RSS (1 rank and
ZeRO-1 rows are controls: they do not use the plain data-parallel gradient reducer); without it, step
time and communication wait of plain 2-rank data parallel.

Usage: .venv/bin/python bench/dist/bench_dist.py [--steps 30] [--build build] [--hidden 256 --layers 4]
       .venv/bin/python bench/dist/bench_dist.py --memory [--hidden 768 --layers 8] [--precision fp32]
       .venv/bin/python bench/dist/bench_dist.py [--memory] --baseline /tmp/before --repeat 3
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
    common = [f"train.precision={a.precision}"]
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
    print(f"model: hidden {a.hidden}, {a.layers} layers, P = {p / 1e6:.1f}M parameters, precision {a.precision}; peak RSS per rank")
    print(f"{'configuration':34s} {'peak RSS':>10s}")
    for name, _, _ in rows:
        print(f"{name:34s} {out[name] / 2**20:8.0f} MB")
    print(f"plain 2 ranks - ZeRO-1 2 ranks: measured {(plain2 - zero2) / 2**20:.0f} MB, predicted "
          f"20P - (4P + 14P/2) = 9P = {9 * p / 2**20:.0f} MB")
    print(f"plain 2 ranks - plain 1 rank: measured {(plain2 - plain1) / 2**20:.0f} MB, predicted 0 for the state "
          "(the gradients are the all-reduce buckets) plus the Gloo / TCPStore runtime")


def compare(binary, baseline, tmp, a):
    """This build against a baseline binary, configurations alternating, medians of --repeat runs."""
    load_before = os.getloadavg()[0]
    if a.memory:
        a.steps = 2
        common = [f"train.precision={a.precision}"]
        rows = [("1 rank, plain (control)", 1, []), ("2 ranks, plain data parallel", 2, []),
                ("2 ranks, ZeRO-1 (control)", 2, ["dist.zero1=true"])]
    else:
        common = []
        rows = [("2 ranks, plain, 25 MiB buckets", 2, []), ("2 ranks, plain, 0.25 MiB buckets", 2, ["dist.bucket_mb=0.25"])]
    res = {}
    n = 0
    for _ in range(a.repeat):
        for name, ranks, extra in rows:
            for tag, b in (("baseline", baseline), ("this build", binary)):
                n += 1
                r = run(b, tmp / f"c{n}", ranks, 1, a, common + extra, rss=a.memory)
                res.setdefault((name, tag), []).append(max(r) if a.memory else r)
                shutil.rmtree(tmp / f"c{n}", ignore_errors=True)
    print(f"model: hidden {a.hidden}, {a.layers} layers, precision {a.precision if a.memory else 'fp32 (config)'}; "
          f"median of {a.repeat} alternating runs; baseline {baseline}")
    print(f"load average: {load_before:.2f} before, {os.getloadavg()[0]:.2f} after (on {os.cpu_count()} cores)")
    if a.memory:
        print(f"{'configuration (peak RSS per rank, MB)':40s} {'baseline':>9s} {'this':>9s} {'diff':>8s}   all runs (baseline | this)")
        for name, _, _ in rows:
            b, t = res[(name, "baseline")], res[(name, "this build")]
            mb, mt = statistics.median(b) / 2**20, statistics.median(t) / 2**20
            print(f"{name:40s} {mb:9.0f} {mt:9.0f} {mt - mb:+8.0f}   {[round(x / 2**20) for x in b]} | "
                  f"{[round(x / 2**20) for x in t]}")
    else:
        print(f"{'configuration (median step s / comm s)':40s} {'baseline':>15s} {'this':>15s} {'step ratio':>11s}")
        for name, _, _ in rows:
            b, t = res[(name, "baseline")], res[(name, "this build")]
            bs, bc = statistics.median(x[1] for x in b), statistics.median(x[2] for x in b)
            ts, tc = statistics.median(x[1] for x in t), statistics.median(x[2] for x in t)
            print(f"{name:40s} {bs:7.3f} / {bc:5.3f} {ts:7.3f} / {tc:5.3f} {ts / bs:10.3f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("SFTGO_BUILD_DIR", str(ROOT / "build")))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--micro", type=int, default=8)
    ap.add_argument("--memory", action="store_true")
    ap.add_argument("--precision", default="bf16", help="--memory: train.precision (bf16 or fp32)")
    ap.add_argument("--baseline", help="build dir of another sftgo-train to compare with (DIR/bin/sftgo-train)")
    ap.add_argument("--repeat", type=int, default=3, help="--baseline: runs per configuration and binary")
    a = ap.parse_args()
    binary = Path(a.build) / "bin" / "sftgo-train"
    tmp = Path(tempfile.mkdtemp(prefix="bench_dist_"))
    try:
        if a.baseline:
            compare(binary, Path(a.baseline) / "bin" / "sftgo-train", tmp, a)
            return
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
