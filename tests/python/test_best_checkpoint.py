"""Evaluation during training (issue 28): train.save_best keeps checkpoints/best (never pruned by
keep_last), train.early_stopping_* ends the run with its log line and exit 0, both survive a kill -9
and --resume auto, several ranks agree, and train.eval_tasks scores multiple-choice tasks on the eval
line. Every expected step comes from replaying the documented rule (docs/operations.md) on the run's
own eval lines here, independently of the C++ tracker."""
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch_util import MPIRUN, mpirun_cmd

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")

PATIENCE, MIN_DELTA = 5, 0.0
TRACKED = ["train.eval_every=2", "train.save_every=2", "train.keep_last=1", "train.save_best=eval_loss",
           "train.early_stopping_metric=eval_loss", f"train.early_stopping_patience={PATIENCE}",
           f"train.early_stopping_min_delta={MIN_DELTA}"]


def args(run_dir, *extra, steps=60):
    sets = {"tokenizer.path": ROOT / "data/demo/tokenizer", "model.vocab_size": 1408, "model.hidden_size": 32,
            "model.intermediate_size": 64, "model.num_layers": 2, "run.output_dir": run_dir,
            "train.max_steps": steps, "data.cache_dir": "", "model.device": "cpu", "train.num_threads": 1,
            "train.global_batch_size": 4, "train.micro_batch_size": 2, "optim.lr": 2e-2, "optim.schedule": "constant",
            "data.eval_path": ROOT / "data/demo/demo_eval.jsonl"}
    for kv in extra:
        k, v = kv.split("=", 1)
        sets[k] = v
    a = ["--config", ROOT / "configs/demo_tiny.yaml"]
    for k, v in sets.items():
        a += ["--set", f"{k}={v}"]
    return [str(x) for x in a]


def train(run_dir, *extra, cmd=(), **kw):
    return subprocess.run([*cmd, str(BIN), *args(run_dir, *extra, **kw)], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def resume(run_dir):
    return subprocess.run([str(BIN), *args(run_dir, *TRACKED), "--resume", "auto"], capture_output=True, text=True,
                          cwd=ROOT, timeout=600)


def lines(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def replay(evals, metric, min_delta, lower=True):
    """The documented rule: (best step, step where patience runs out or None)."""
    best, best_step, bad, best_any, best_any_step = None, None, 0, None, None
    for e in evals:
        v, step = e[metric], e["step"]
        if best is None or (v < best - min_delta if lower else v > best + min_delta):
            best, best_step, bad = v, step, 0
        else:
            bad += 1
        if best_any is None or (v < best_any if lower else v > best_any):
            best_any, best_any_step = v, step
        if bad >= PATIENCE:
            return best_any_step, step
    return best_any_step, None


def best_target(run_dir):
    link = Path(run_dir) / "checkpoints" / "best"
    assert link.is_symlink(), f"{link} is not a symlink"
    return os.readlink(link)


def check_run(run_dir, p):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr[-3000:]}"
    evals = [m for m in lines(run_dir) if "eval_loss" in m]
    best, stop = replay(evals, "eval_loss", MIN_DELTA)
    assert stop is not None and stop < 60, f"the demo should stop early under min_delta {MIN_DELTA}: {evals}"
    assert f"early stopping at step {stop}/60" in p.stderr
    assert lines(run_dir)[-1]["step"] == stop  # nothing trained past the stop
    assert best_target(run_dir) == f"step_{best:08d}"
    steps = sorted(d.name for d in (Path(run_dir) / "checkpoints").glob("step_*"))
    # keep_last 1: the final checkpoint, plus the best (older, still there).
    assert steps == sorted({f"step_{best:08d}", f"step_{stop:08d}"}), steps
    state = json.loads((Path(run_dir) / "checkpoints" / f"step_{best:08d}" / "trainer_state.json").read_text())
    assert state["best"]["step"] == best and state["best"]["metric"] == "eval_loss"
    final = json.loads((Path(run_dir) / "checkpoints" / f"step_{stop:08d}" / "trainer_state.json").read_text())
    assert final["early_stopping"]["bad_evals"] == PATIENCE
    return best, stop, evals


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bestckpt") / "run"
    p = train(run_dir, *TRACKED)
    return run_dir, p, check_run(run_dir, p)


def test_best_link_and_early_stop(reference):
    run_dir, p, (best, stop, _) = reference
    assert best < stop  # the best is older than the final checkpoint: kept beside it (keep_last 1)
    # Resuming a run that stopped early trains nothing more.
    again = resume(run_dir)
    assert again.returncode == 0 and "stopped early at step" in again.stderr, again.stderr[-2000:]
    assert lines(run_dir)[-1]["step"] == stop


def test_kill9_between_best_and_stop_then_resume(reference, tmp_path):
    _, _, (best, stop, evals) = reference
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([str(BIN), *args(run_dir, *TRACKED)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=ROOT)
    metrics = run_dir / "metrics.jsonl"
    kill_at = best + 3  # step best + 2 has its checkpoint once step best + 3 is logged
    try:
        while proc.poll() is None:
            if metrics.exists() and any(json.loads(x)["step"] >= kill_at for x in metrics.read_text().splitlines()):
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"
    newest = max(int(d.name[5:]) for d in (run_dir / "checkpoints").glob("step_*"))
    assert best < newest < stop, (best, newest, stop)
    p = resume(run_dir)
    assert "resumed from" in p.stderr
    best2, stop2, evals2 = check_run(run_dir, p)
    assert (best2, stop2) == (best, stop)
    # CPU resume is exact: the same held-out losses at the same steps.
    assert [(e["step"], e["eval_loss"]) for e in evals2] == [(e["step"], e["eval_loss"]) for e in evals]


@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")
def test_two_ranks_agree(tmp_path):
    run_dir = tmp_path / "run"
    p = train(run_dir, *TRACKED, cmd=mpirun_cmd(2))
    best, stop, _ = check_run(run_dir, p)
    assert p.stderr.count("early stopping at step") == 1  # rank 0 reports; both ranks stopped there (exit 0)


def test_eval_tasks_on_the_eval_line(tmp_path):
    run_dir = tmp_path / "run"
    task = "arc_challenge"
    p = train(run_dir, f"train.eval_tasks={task}:data/eval/samples/{task}.jsonl", "train.eval_limit=5",
              f"train.save_best=eval_{task}_acc_norm", "train.eval_every=3", steps=6)
    assert p.returncode == 0, p.stderr[-3000:]
    evals = [m for m in lines(run_dir) if "eval_loss" in m]
    assert [e["step"] for e in evals] == [0, 3, 6]
    for e in evals:
        assert 0 <= e[f"eval_{task}_acc"] <= 1 and 0 <= e[f"eval_{task}_acc_norm"] <= 1
    best = max(evals, key=lambda e: (e[f"eval_{task}_acc_norm"], -e["step"]))["step"]  # the first best
    assert best_target(run_dir) == f"step_{best:08d}"
    # The same numbers as `sftgo-train eval` on the final checkpoint, which loads it from disk.
    out = tmp_path / "eval.json"
    e = subprocess.run([str(BIN), "eval", "--model", str(run_dir / "checkpoints/step_00000006"), "--task", task,
                        "--data", f"data/eval/samples/{task}.jsonl", "--limit", "5", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert e.returncode == 0, e.stderr[-2000:]
    got = json.loads(out.read_text())["metrics"]
    # fp32 on both sides; the shared-context scoring is the same code: agreement to rounding.
    assert evals[-1][f"eval_{task}_acc"] == pytest.approx(got["acc"]["value"], abs=1e-12)
    assert evals[-1][f"eval_{task}_acc_norm"] == pytest.approx(got["acc_norm"]["value"], abs=1e-12)


@pytest.mark.parametrize("extra,needle", [
    (["train.save_best=eval_accuracy"], "train.save_best: 'eval_accuracy' is not an eval metric"),
    (["train.early_stopping_metric=eval_loss", "data.eval_path="], "need data.eval_path"),
    (["train.eval_tasks=hellaswag"], "train.eval_tasks: 'hellaswag' is not TASK:PATH"),
])
def test_bad_keys_are_named(tmp_path, extra, needle):
    p = train(tmp_path / "run", *extra, steps=2)
    assert p.returncode == 1 and needle in p.stderr, p.stderr[-2000:]
