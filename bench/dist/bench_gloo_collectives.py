"""Gloo over loopback: what ZeRO-2 could send a bucket's sums with, on the same bytes (issue #27).

Two processes (torch.distributed, Gloo, 127.0.0.1, --threads LibTorch threads each) hold the same-sized
fp32 gradient (--values, default 155M: the speed benchmark's 2-layer model) and time, --repeats times:

* all-reduce of a clone: what c10d's ProcessGroupGloo does for ZeRO-1's reduce-scatter;
* one reduce per owning rank, bucket by bucket (`dist.bucket_mb` MiB buckets): ZeRO-2 over Gloo
  before 27f0669 (Gloo's reduce is a ring reduce-scatter, then a gather to the root);
* all-to-all pieces of bucket / world values, each rank receiving every rank's copy of its own part,
  at most 2 in flight: ZeRO-2 over Gloo now (src/dist/zero2.cpp).

Only the communication is timed (no backward runs beside it), so this is the floor each choice costs
on this host, not what it costs inside a step (bench_zero2_speed.py measures that).

Usage: .venv/bin/python bench/dist/bench_gloo_collectives.py [--values 155000000] [--bucket-mb 25]
       [--repeats 2] [--threads 1]
"""
import argparse
import os
import sys
import time
from pathlib import Path

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_plan_memory import free_port  # noqa: E402


def owned(lo, hi, rank, half):
    return max(lo, rank * half), min(hi, (rank + 1) * half)


def run(rank, a, port):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(a.threads)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    x = torch.randn(a.values)
    half = (a.values + 1) // 2
    bucket = max(1, a.bucket_mb * 2**20 // 4)
    for rep in range(a.repeats):
        dist.barrier()
        t = time.perf_counter()
        y = x.clone()
        dist.all_reduce(y)
        all_reduce = time.perf_counter() - t

        dist.barrier()
        t = time.perf_counter()
        works = []
        for lo in range(0, a.values, bucket):
            hi = min(a.values, lo + bucket)
            for r in range(2):
                s, e = owned(lo, hi, r, half)
                if s < e:
                    works.append(dist.reduce(x[s:e].clone(), r, async_op=True))
        for w in works:
            w.wait()
        reduces = time.perf_counter() - t

        dist.barrier()
        t = time.perf_counter()
        flying = []
        piece = max(1, bucket // 2)
        for lo in range(0, a.values, piece):
            hi = min(a.values, lo + piece)
            s, e = owned(lo, hi, rank, half)
            own = max(0, e - s)
            counts = [max(0, min(hi, (r + 1) * half) - max(lo, r * half)) for r in range(2)]
            out = torch.empty(2 * own)
            flying.append((dist.all_to_all_single(out, x[lo:hi], [own, own], counts, async_op=True), out))
            if len(flying) > 2:
                flying.pop(0)[0].wait()
        for w, _ in flying:
            w.wait()
        all_to_all = time.perf_counter() - t
        if rank == 0:
            print(f"repeat {rep}: all-reduce of a clone {all_reduce:.2f} s, reduce per owner {reduces:.2f} s, "
                  f"all-to-all pieces {all_to_all:.2f} s ({a.values * 4 / 1e6:.0f} MB)", flush=True)
    dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--values", type=int, default=155_000_000)
    ap.add_argument("--bucket-mb", type=int, default=25)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    mp.spawn(run, args=(a, free_port()), nprocs=2)


if __name__ == "__main__":
    main()
