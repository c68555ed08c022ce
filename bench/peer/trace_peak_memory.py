#!/usr/bin/env python3
"""Where the peak memory of the peer benchmark's sftgo-train job goes (heaptrack).

  bench/peer/trace_peak_memory.py [--build DIR] [--tokenizer DIR] [--steps K] [--sites N]

Runs the sftgo side of bench/peer/bench_peer_train.py (same checkpoint, data, config overrides, one
thread) three times: `sftgo-train --version` (peak RSS of the LibTorch runtime alone), the job itself
(its peak RSS, VmHWM), and the job under heaptrack, whose `heaptrack_print` lists the heap allocations
alive at the heap's peak. Those are grouped here by call site (the innermost sftgo frame and the
LibTorch op that allocated) and printed largest first, in MiB, so each [V x H] buffer shows up by name.
Needs heaptrack (`apt-get install heaptrack`); heaptrack slows the job ~2x and its own bookkeeping
is not in the heap numbers. Output is for reading; the numbers go into docs/benchmarks.md by hand.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_peer_train as peer  # noqa: E402  (same job definition as the benchmark)

MIB = 1024.0 * 1024.0
UNITS = {"": 1.0, "B": 1.0, "K": 1e3, "M": 1e6, "G": 1e9}  # heaptrack_print: decimal prefixes


def parse_size(text: str) -> float:
    m = re.fullmatch(r"([0-9.]+)([KMG]?)B?", text)
    if not m:
        raise ValueError(f"unexpected heaptrack size '{text}'")
    return float(m.group(1)) * UNITS[m.group(2)]


def peak_rss_mib(cmd: list[str]) -> float:
    p = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], cwd=peer.ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:3])} failed:\n{p.stderr[-3000:]}")
    return int(p.stderr.strip().splitlines()[-1]) / 1024.0


GENERIC = {"empty_cpu", "empty_strided_cpu", "empty_like", "empty_memory_format", "empty_strided", "empty",
           "zeros", "zeros_symint", "zeros_like", "resize_bytes_cpu", "resize_", "resize_output"}


def site_of(frames: list[str]) -> str:
    """Who allocated: the innermost sftgo frame (for backward, the autograd node instead) and the
    innermost LibTorch op that is not a bare allocation (else the outermost bare one)."""
    ops = [m.group(1) or m.group(2) for f in frames
           if (m := re.match(r"at::native::(\w+)\(|at::_ops::(\w+)::call", f))]
    specific = [o for o in ops if o not in GENERIC]
    op = specific[0] if specific else (ops[-1] if ops else "?")
    node = next((m.group(1) for f in frames if (m := re.search(r"autograd::generated::(\w+)::apply", f))), None)
    if node is None and any("CppNode" in f for f in frames):
        node = "custom autograd Function"
    if node is not None and any("Engine::evaluate_function" in f for f in frames):
        return f"backward: {node} <- {op}"
    own = next((f for f in frames if f.startswith("sftgo::")), "?")
    own = re.sub(r"\(.*", "", own)
    return f"{own} <- {op}"


def peak_sites(report: str) -> tuple[float, float, dict[str, float]]:
    """Heap peak, the tensor (c10::alloc_cpu) part of it, and {site: bytes alive at the peak} from
    heaptrack_print's PEAK MEMORY CONSUMERS (run with -n 1: the largest allocating function only)."""
    total = parse_size(re.search(r"peak heap memory consumption: (\S+)", report).group(1))
    tensors = 0.0
    section = report.split("PEAK MEMORY CONSUMERS", 1)[1].split("MOST TEMPORARY ALLOCATIONS", 1)[0]
    sites: dict[str, float] = defaultdict(float)
    entry, frames = None, []

    def flush():
        if entry is not None:
            sites[site_of(frames)] += entry

    for line in section.splitlines():
        top = re.match(r"^(\S+) peak memory consumed over \d+ calls from", line)
        sub = re.match(r"^\s*(\S+) consumed over \d+ calls from:", line)
        rest = re.match(r"^\s*and (\S+) from \d+ other places", line)
        if top:
            tensors += parse_size(top.group(1))
        if top or rest:
            flush()
            entry, frames = None, []
            if rest:
                sites["(smaller sites, not listed)"] += parse_size(rest.group(1))
        elif sub:
            flush()
            entry, frames = parse_size(sub.group(1)), []
        elif entry is not None and line.startswith("    ") and not line.strip().startswith(("in ", "at ")):
            frames.append(line.strip())
    flush()
    return total, tensors, sites


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(peer.ROOT / "build"))
    ap.add_argument("--tokenizer", default=None, help="default: ../shared/data/llama3 if present, else data/demo/tokenizer")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--sites", type=int, default=60, help="allocation sites heaptrack_print lists under the peak")
    args = ap.parse_args()
    if shutil.which("heaptrack") is None or shutil.which("heaptrack_print") is None:
        raise SystemExit("heaptrack not found: apt-get install heaptrack")
    if args.tokenizer is None:
        shared = peer.ROOT.parent / "shared/data/llama3"
        args.tokenizer = str(shared if (shared / "tokenizer.json").exists() else peer.ROOT / "data/demo/tokenizer")
    binary = str(Path(args.build) / "bin/sftgo-train")
    with tempfile.TemporaryDirectory(prefix="sftgo_peakmem_") as tmp:
        tmp = Path(tmp)
        vocab = peer.write_checkpoint(Path(args.tokenizer), tmp / "ckpt")
        sets = ["--set", f"tokenizer.path={args.tokenizer}", "--set", f"model.path={tmp / 'ckpt'}", "--set", "model.preset=auto",
                "--set", "loss.scope=microbatch", "--set", f"train.max_steps={args.steps}",
                "--set", "train.num_threads=1", "--set", f"data.cache_dir={tmp / 'cache'}",
                "--set", "train.log_every=1", "--set", "train.epochs=100"]
        job = [binary, "--config", "configs/demo_tiny.yaml", *sets]
        runtime = peak_rss_mib([binary, "--version"])
        rss = peak_rss_mib([*job, "--set", f"run.output_dir={tmp / 'run'}"])
        out = tmp / "heaptrack"
        subprocess.run(["heaptrack", "-o", str(out), *job, "--set", f"run.output_dir={tmp / 'run_ht'}"], cwd=peer.ROOT,
                       check=True, capture_output=True, text=True)
        data = next(tmp.glob("heaptrack*.zst"), None) or next(tmp.glob("heaptrack*.gz"))
        report = subprocess.run(["heaptrack_print", "-f", str(data), "-n", "1", "-s", str(args.sites), "-a", "0",
                                 "-T", "0"], capture_output=True, text=True, check=True).stdout
    heap, tensors, sites = peak_sites(report)
    print(f"vocab {vocab}, {args.steps} steps, 1 thread")
    print(f"peak RSS (VmHWM) of the job: {rss:.0f} MiB; of `sftgo-train --version`: {runtime:.0f} MiB")
    print(f"heap at its peak (heaptrack): {heap / MIB:.0f} MiB, of which tensors (c10::alloc_cpu) "
          f"{tensors / MIB:.0f} MiB, by site:")
    for site, b in sorted(sites.items(), key=lambda kv: -kv[1]):
        if b >= 0.5 * MIB:
            print(f"  {b / MIB:8.1f} MiB  {site}")


if __name__ == "__main__":
    main()
