"""loss.step_stats speculate under mpirun -np 2 (issue 29 item 3): 2 ranks x 2 micro-batches, step
scope, sftgo. Speculating (bets won or lost) must train bit for bit as the pre-pass plan: every
metrics.jsonl field but timings and the final weights identical, with plain data parallel and with
ZeRO-1 (whose reduction starts during the last backward and must be completed and cleared before a
redo). SFTGO_TEST_BET_AGAINST=1 bets on the previous step's losing group and redoes every speculated
step, on both ranks alike."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from launch_util import mpirun_cmd
from test_dist_mpirun import BIN, MPIRUN, ROOT, args, last_ckpt, metrics, weights

pytestmark = [pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built"),
              pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")]

TIMING = {"step_s", "tokens_per_s", "elapsed_s", "comm_s", "mfu"}


def train2(run_dir, stats, against=False, extra=()):
    env = dict(os.environ)
    env.pop("SFTGO_TEST_BET_AGAINST", None)
    if against:
        env["SFTGO_TEST_BET_AGAINST"] = "1"
    cmd = mpirun_cmd(2) + (["-x", "SFTGO_TEST_BET_AGAINST"] if against else []) + [str(BIN)] + args(
        run_dir, steps=5, global_batch=8, micro=2, extra=("loss.scope=step", f"loss.step_stats={stats}", *extra))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p.stdout + p.stderr


@pytest.mark.parametrize("extra", [(), ("dist.zero1=true",)], ids=["ddp", "zero1"])
def test_speculation_on_two_ranks_equals_the_prepass(tmp_path, extra):
    import numpy as np
    train2(tmp_path / "prepass", "prepass", extra=extra)
    train2(tmp_path / "won", "speculate", extra=extra)
    log = train2(tmp_path / "lost", "speculate", against=True, extra=extra)
    assert log.count("step redone") == 4, log  # steps 2-5 (rank 0 logs); step 1 takes the pre-pass
    ref = metrics(tmp_path / "prepass")
    for run in ("won", "lost"):
        got = metrics(tmp_path / run)
        assert len(got) == len(ref) == 5
        for a, b in zip(ref, got):
            assert {k: v for k, v in a.items() if k not in TIMING} == {k: v for k, v in b.items() if k not in TIMING}
        wa, wb = weights(last_ckpt(tmp_path / "prepass")), weights(last_ckpt(tmp_path / run))
        assert wa.keys() == wb.keys()
        for k in wa:
            assert np.array_equal(wa[k], wb[k]), f"{run}: {k} differs"
