#!/usr/bin/env python3
"""Peak RSS of training and resuming at a real shape on CPU, against the memory planner (issue #29).

The Llama-3.2-1B shape (hidden 2048, MLP 8192, 32 heads, 8 KV heads, vocabulary 128,256, tied head)
cut to --layers layers (12: 0.99e9 parameters), random weights, trains on generated chat examples (random
words) truncated to --seq tokens, one micro-batch of one example per step, `loss.objective: ce`, 2 LibTorch threads. Cases:

  fresh   --steps optimizer steps (a checkpoint at step --steps - 1 when a resume case follows)
  resume  --resume from that checkpoint: loads weights, fp32 masters (bf16) and AdamW state, then one step

each for `train.precision` fp32 and bf16, and for every --bin (the binary before and after a change, in
the same run). Peak RSS = the process's maximum resident set (GNU time %M; MiB = 2^20 bytes).

Predicted = `sftgo-train plan --json` for the same config (the `ddp` row's device_total, docs/memory.md:
bf16 holds weights, fp32 master gradients, masters and AdamW moments beside one micro-batch's
activations; fp32 on one process frees its gradients between steps, so its total is weights + moments
+ the larger of the backward's start and the optimizer step, the row's peak_phase) plus LibTorch's
own footprint, measured by the same command on the `tiny` preset (0.2M parameters) and added. Issue
#29 asks for measured within 5% of predicted, and resume peak <= training peak.

--scope also times `loss.objective: sftgo` (tfidf groups) over 2 micro-batches per step at
--scope-layers layers: loss.scope microbatch, and step with loss.step_stats prepass and speculate (a
binary without loss.step_stats runs scope step, its pre-pass, once).

Usage: .venv/bin/python bench/train/bench_memory_1b.py [--bin build/bin/sftgo-train ...] [--layers 12]
       [--seq 512] [--steps 2] [--cases fp32:fresh,fp32:resume,bf16:fresh,bf16:resume] [--scope]
       [--malloc-default] [--work DIR] [--json OUT]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MIB = 2 ** 20


def make_data(work):
    """64 chat examples of random words, each longer than --seq tokens (truncated to it)."""
    path = work / "long_sft.jsonl"
    if path.exists():
        return path
    rng = random.Random(29)
    words = ("the a of to and in that is for it with as on be at by this we from or an are which time model data "
             "token group loss weight step layer value text word train test result paper method").split()
    with path.open("w") as f:
        for _ in range(64):
            q = " ".join(rng.choice(words) for _ in range(40))
            r = " ".join(rng.choice(words) for _ in range(700))
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": r}]}) + "\n")
    return path


def settings(a, precision, tiny=False, extra=None):
    s = {"tokenizer.path": ROOT / "data/demo/tokenizer", "data.path": a.data, "data.truncation": "truncate",
         "data.packing": "false", "data.max_seq_len": a.seq, "data.cache_dir": "", "model.device": "cpu",
         "grouping.function": "none", "loss.objective": "ce", "train.precision": precision,
         "model.dtype": "bfloat16" if precision == "bf16" else "float32",
         "train.max_steps": a.steps, "train.global_batch_size": 1, "train.micro_batch_size": 1,
         "train.num_threads": a.threads, "train.log_every": 1, "train.save_every": 0, "train.save_final": "false",
         "train.eval_every": 0}
    if tiny:
        s.update({"model.preset": "tiny", "model.vocab_size": 1408})
    else:
        # The real vocabulary (configs/demo_tiny.yaml, the base config, sets 1408): the tied head is the point.
        s.update({"model.preset": "llama3.2-1b", "model.num_layers": a.layers, "model.vocab_size": 128256})
    s.update(extra or {})
    return [x for k, v in s.items() for x in ("--set", f"{k}={v}")]


def run(binary, run_dir, sets, env=None, resume=None):
    """(peak RSS bytes, wall s, [step_s of each step]) of one sftgo-train process."""
    run_dir.mkdir(parents=True, exist_ok=True)
    rss_file = run_dir / "time.txt"
    cmd = ["/usr/bin/time", "-f", "%M %e", "-o", str(rss_file), str(binary), "--config",
           str(ROOT / "configs/demo_tiny.yaml"), "--set", f"run.output_dir={run_dir}"] + sets
    if resume:
        cmd += ["--resume", str(resume)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)}\nfailed:\n{p.stderr[-3000:]}")
    kb, wall = rss_file.read_text().split()[-2:]
    steps = []
    metrics = run_dir / "metrics.jsonl"
    if metrics.exists():
        for line in metrics.read_text().splitlines():
            m = json.loads(line)
            if "step_s" in m:
                steps.append(m["step_s"])
    return int(kb) * 1024, float(wall), steps


def predicted(binary, sets):
    cmd = [str(binary), "plan", "--config", str(ROOT / "configs/demo_tiny.yaml"), "--json"] + sets
    plan = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    row = next(r for r in plan["choices"] if r["current"])
    return row


def gib(x):
    return x / 2 ** 30


def memory_cases(a, bins, work, rows):
    new = bins[-1]
    base_rss = run(new, work / "libtorch", settings(a, "fp32", tiny=True))[0]
    print(f"LibTorch footprint (tiny preset): {base_rss / MIB:.0f} MiB", flush=True)
    cases = [c.split(":") for c in a.cases.split(",")]
    before_cases = [c.split(":") for c in a.before_cases.split(",")]
    checkpoints = {}
    for precision in ("fp32", "bf16"):
        if [precision, "resume"] in cases or [precision, "fresh"] in cases:
            sets = settings(a, precision)
            plan = predicted(new, sets)
            pred = plan["device_total"] + base_rss
            for binary in [new] + [b for b in bins if b != new]:  # the new binary writes the checkpoint
                label = "after" if binary == new else "before"
                for kind in ("fresh", "resume"):
                    if [precision, kind] not in (cases if binary == new else before_cases):
                        continue
                    env = {"SFTGO_MALLOC_TUNING": "0"} if a.malloc_default else None
                    d = work / f"{precision}_{kind}_{label}"
                    shutil.rmtree(d, ignore_errors=True)
                    if kind == "fresh":
                        want_ckpt = [precision, "resume"] in cases and binary == new
                        extra = {"train.save_every": a.steps - 1} if want_ckpt else {}
                        peak, wall, steps = run(binary, d, settings(a, precision, extra=extra), env)
                        if want_ckpt:
                            checkpoints[precision] = d / "checkpoints" / f"step_{a.steps - 1:08d}"
                    else:
                        ck = checkpoints.get(precision)
                        if ck is None:
                            raise SystemExit(f"{precision}:resume needs {precision}:fresh first (it writes the checkpoint)")
                        peak, wall, steps = run(binary, d, settings(a, precision), env, resume=ck)
                    rows.append({"precision": precision, "case": kind, "binary": str(binary), "label": label,
                                 "peak_rss": peak, "wall_s": wall, "step_s": steps, "predicted": pred,
                                 "predicted_parts": {k: plan.get(k) for k in ("weights", "gradients", "masters", "moments",
                                                                              "activations", "step_transient",
                                                                              "backward_gradients", "peak_phase")},
                                 "libtorch_rss": base_rss, "malloc_default": a.malloc_default})
                    print(f"{precision} {kind:6s} {label:6s}: peak {gib(peak):6.2f} GiB, predicted {gib(pred):6.2f} GiB "
                          f"({peak / pred - 1:+.1%}; peak at {plan.get('peak_phase', 'backward')}), wall {wall:.0f} s, "
                          f"step_s {[round(s, 1) for s in steps]}", flush=True)


def scope_cases(a, bins, work, rows):
    a = argparse.Namespace(**{**vars(a), "layers": a.scope_layers, "steps": a.scope_steps})
    variants = [("microbatch", {"loss.scope": "microbatch"}),
                ("step_prepass", {"loss.scope": "step", "loss.step_stats": "prepass"}),
                ("step_speculate", {"loss.scope": "step", "loss.step_stats": "speculate"})]
    for binary in bins:
        label = "after" if binary == bins[-1] else "before"
        has_stats = "loss.step_stats" in subprocess.run([str(binary), "config", "--reference"], capture_output=True,
                                                        text=True).stdout
        for name, extra in variants:
            if "loss.step_stats" in extra and not has_stats:
                if name == "step_speculate":
                    continue
                extra = {"loss.scope": "step"}  # before the setting existed: the pre-pass
            ex = {"loss.objective": "sftgo", "grouping.function": "tfidf", "train.global_batch_size": 2, **extra}
            d = work / f"scope_{name}_{label}"
            shutil.rmtree(d, ignore_errors=True)
            peak, wall, steps = run(binary, d, settings(a, "fp32", extra=ex))
            rows.append({"case": f"scope_{name}", "binary": str(binary), "label": label, "peak_rss": peak,
                         "wall_s": wall, "step_s": steps})
            print(f"scope {name:15s} {label:6s}: step_s {[round(s, 1) for s in steps]}, peak {gib(peak):.2f} GiB",
                  flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", action="append", help="sftgo-train binaries, the last is 'after' (default: build/bin)")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--cases", default="fp32:fresh,fp32:resume,bf16:fresh,bf16:resume")
    ap.add_argument("--before-cases", default="fp32:fresh,fp32:resume,bf16:fresh,bf16:resume",
                    help="the cases the other binaries run (a subset saves time)")
    ap.add_argument("--scope", action="store_true", help="also time scope microbatch vs step (prepass, speculate)")
    ap.add_argument("--scope-only", action="store_true")
    ap.add_argument("--scope-layers", type=int, default=2, help="layers of the --scope runs")
    ap.add_argument("--scope-steps", type=int, default=3, help="optimizer steps of the --scope runs")
    ap.add_argument("--malloc-default", action="store_true", help="run with SFTGO_MALLOC_TUNING=0")
    ap.add_argument("--work", help="keep run directories here (default: a temporary directory)")
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    bins = [Path(b).resolve() for b in (a.bin or [ROOT / "build/bin/sftgo-train"])]
    rows = []
    with tempfile.TemporaryDirectory(prefix="sftgo_mem1b_") as tmp:
        work = Path(a.work) if a.work else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        a.data = make_data(work)
        if not a.scope_only:
            memory_cases(a, bins, work, rows)
        if a.scope or a.scope_only:
            scope_cases(a, bins, work, rows)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
