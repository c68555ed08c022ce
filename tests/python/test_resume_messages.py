"""Resuming, as a user sees it (issue 24): the changed-config warning lists each changed key (old -> new);
resuming a finished run rewrites nothing and says it is complete, and a larger train.max_steps still
extends it."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def train(run_dir, steps, *extra):
    sets = [f"tokenizer.path={DEMO_TOK}", "model.vocab_size=1408", "model.hidden_size=32", "model.intermediate_size=64",
            "model.num_layers=2", f"run.output_dir={run_dir}", f"train.max_steps={steps}", "data.cache_dir=",
            "model.device=cpu", "train.num_threads=1", "train.global_batch_size=4", "train.micro_batch_size=2",
            "optim.schedule=constant", "optim.warmup_ratio=0", *extra]
    args = [str(BIN), "--config", str(ROOT / "configs/demo_tiny.yaml")]
    for kv in sets:
        args += [kv] if kv.startswith("--") else ["--set", kv]
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def snapshot(run_dir):
    """path -> (bytes, mtime_ns) of every file a run keeps, the lock file aside (it names the current holder)."""
    return {str(p.relative_to(run_dir)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(Path(run_dir).rglob("*")) if p.is_file() and p.name != ".lock"}


def test_resuming_a_finished_run_rewrites_nothing_and_extending_still_works(tmp_path):
    run = tmp_path / "run"
    train(run, 2)
    before = snapshot(run)
    assert any(k.startswith("checkpoints/step_00000002/") for k in before), sorted(before)
    p = train(run, 2, "--resume=auto")
    assert f"{run} is already complete at step 2: nothing to do (raise train.max_steps to train further)" in p.stderr, \
        p.stderr
    assert "final loss" not in p.stderr and "saved checkpoint" not in p.stderr, p.stderr
    assert "differs from the one it was saved with" not in p.stderr, p.stderr
    assert snapshot(run) == before  # same files, same bytes, same modification times

    # A larger train.max_steps extends it; the warning lists what changed, one key per line.
    p = train(run, 3, "--resume=auto", "optim.lr=2e-3", "train.log_every=2")
    lines = p.stderr.splitlines()
    at = next(i for i, l in enumerate(lines) if "with a config that differs from the one it was saved with:" in l)
    changed = []
    for l in lines[at + 1:]:
        if not l.startswith("  "):
            break
        changed.append(l.strip())
    # train.log_every is left out: bookkeeping, it changes no weight.
    assert changed == ["optim.lr: 0.003 -> 0.002", "train.max_steps: 2 -> 3"], p.stderr
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in l]
    assert steps == [1, 2, 3], steps
    assert (run / "checkpoints" / "step_00000003").is_dir()
