"""Data parallelism end to end through sftgo-train on CPU with Gloo: 2 ranks x batch b against
1 rank x batch 2b (plain DDP and ZeRO-1), step-scope group statistics for 1x4 / 2x2 / 4x1
(micro-batches x ranks), resume in the 2-rank setting (and ZeRO-1 resharded onto 1 rank), a
killed or hung rank ending the job with a message naming it while the last checkpoint stays intact,
and Ctrl-C / SIGTERM / SIGKILL to mpirun (a consistent, resumable checkpoint; no orphaned ranks).

Launchers: Open MPI's mpirun (--oversubscribe: CI has 2 cores) and torchrun-style RANK/WORLD_SIZE
environments started from here."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from launch_util import free_port, mpirun_cmd

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built"),
              pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")]

# Weights after several AdamW steps: the 2-rank gradients are the same sums in a different order
# (per-rank partial sums, then the all-reduce), so fp32 rounding differs by ~1e-7 relative per
# step; AdamW's m / sqrt(v) amplifies that for coordinates whose gradient is ~0 (the update is
# ~lr whatever the gradient's size). Measured max abs difference after 4 steps: 1.0e-5 on weights
# of size ~0.02-1; 5e-5 leaves headroom while a missing rank's gradient (differences ~1e-3, the
# lr) still fails. AdamW is nearly scale-invariant, so summing vs averaging across ranks is caught
# by the grad-norm comparison instead (a factor of 2).
ATOL = 5e-5


def args(run_dir, steps=4, global_batch=8, micro=4, extra=()):
    a = ["--config", ROOT / "configs/demo_tiny.yaml",
         "--set", f"tokenizer.path={DEMO_TOK}", "--set", "model.vocab_size=1408",
         "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_layers=2",
         "--set", f"run.output_dir={run_dir}", "--set", f"train.max_steps={steps}", "--set", "data.cache_dir=",
         "--set", "model.device=cpu", "--set", "train.num_threads=1",
         "--set", f"train.global_batch_size={global_batch}", "--set", f"train.micro_batch_size={micro}",
         "--set", "optim.warmup_ratio=0", "--set", "dist.timeout_s=20"]
    for kv in extra:
        a += ["--set", kv]
    return [str(x) for x in a]


def train(run_dir, ranks=1, timeout=300, **kw):
    cmd = ([str(BIN)] if ranks == 1 else mpirun_cmd(ranks) + [str(BIN)]) + args(run_dir, **kw)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def weights(ckpt):
    """name -> float64 numpy array (through torch: numpy has no bfloat16)."""
    from safetensors.torch import load_file
    return {k: v.double().numpy() for k, v in load_file(str(Path(ckpt) / "model.safetensors")).items()}


def last_ckpt(run_dir):
    # Complete checkpoints only, as sftgo's list_checkpoints: step_NNNNNNNN exactly, with its trainer
    # state (a rank killed mid-save leaves a step_N.tmp-PID directory behind).
    done = [p for p in (Path(run_dir) / "checkpoints").glob("step_*")
            if len(p.name) == 13 and (p / "trainer_state.json").exists()]
    return sorted(done)[-1]


def metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"step"' in l]


def assert_same_weights(a, b, atol):
    import numpy as np
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= atol, f"max abs weight difference {worst:.3g} > {atol:g}"
    return worst


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """1 rank x 8 examples per step (2 micro-batches of 4)."""
    d = tmp_path_factory.mktemp("one")
    train(d)
    return d


@pytest.mark.parametrize("zero1", [False, True])
def test_two_ranks_equal_one_rank_with_twice_the_batch(one_rank, tmp_path, zero1):
    # 2 ranks x (1 micro-batch of 4) = 8 examples per step, the same 8 as one rank's 2 x 4.
    train(tmp_path, ranks=2, extra=[f"dist.zero1={str(zero1).lower()}"])
    worst = assert_same_weights(last_ckpt(one_rank), last_ckpt(tmp_path), ATOL)
    print(f"zero1={zero1}: max abs weight difference {worst:.3g}")
    m1, m2 = metrics(one_rank), metrics(tmp_path)
    assert len(m1) == len(m2) == 4
    for a, b in zip(m1, m2):
        assert a["count_imp"] == b["count_imp"] and a["count_unimp"] == b["count_unimp"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    ck = last_ckpt(tmp_path)
    assert (ck / "optimizer.pt").exists() != zero1
    assert sorted(p.name for p in ck.glob("zero_rank*")) == (
        ["zero_rank00000_of_00002.pt", "zero_rank00001_of_00002.pt"] if zero1 else [])
    assert not list((tmp_path / "checkpoints").glob(".zero_staging*"))


def test_bf16_zero1_two_ranks_match_one_rank(tmp_path):
    """precision bf16: ZeRO-1's fp32 master shards and bf16 reduce-scatter against one rank's full fp32
    masters. Weights are bf16 (8 significant bits): after a few steps the runs may differ by one bf16
    rounding step of |w| <= 1, i.e. 2^-8 = 3.9e-3; measured 4.9e-4 (one step at |w| ~ 0.1)."""
    one, two = tmp_path / "one", tmp_path / "two"
    train(one, extra=["train.precision=bf16"])
    train(two, ranks=2, extra=["train.precision=bf16", "dist.zero1=true"])
    assert_same_weights(last_ckpt(one), last_ckpt(two), 2 ** -8)
    for a, b in zip(metrics(one), metrics(two)):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-3)


TORCHRUN = Path(os.environ.get("VIRTUAL_ENV", ROOT / ".venv")) / "bin" / "torchrun"


@pytest.mark.skipif(not TORCHRUN.exists(), reason="torchrun (torch wheel) not installed")
def test_torchrun_launch_equals_one_rank(one_rank, tmp_path):
    # torchrun's agent serves the store itself (TORCHELASTIC_USE_AGENT_STORE); rank 0 joins as a client.
    cmd = [str(TORCHRUN), "--no-python", "--nproc-per-node", "2", "--master-port", str(free_port()), str(BIN)]
    p = subprocess.run(cmd + args(tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "2 ranks (torchrun)" in p.stderr
    assert_same_weights(last_ckpt(one_rank), last_ckpt(tmp_path), ATOL)


def test_step_scope_statistics_1x4_2x2_4x1(tmp_path):
    """scope=step: group sums and counts cover every micro-batch of every rank, so the per-step
    statistics and the update do not depend on how 8 examples are split into micro-batches x ranks."""
    runs = {}
    for ranks, micro in [(1, 2), (2, 2), (4, 2)]:  # 4 x 1, 2 x 2, 1 x 4 micro-batches per rank
        d = tmp_path / f"r{ranks}"
        train(d, ranks=ranks, steps=2, micro=micro, extra=["loss.scope=step"])
        runs[ranks] = d
    ref = metrics(runs[1])
    for ranks in (2, 4):
        for a, b in zip(ref, metrics(runs[ranks])):
            assert (a["count_imp"], a["count_unimp"]) == (b["count_imp"], b["count_unimp"])
            for k in ("loss", "loss_ce", "loss_imp", "loss_unimp"):
                # The same per-token losses summed in another order (fp64 sums of fp32 terms): 1e-6.
                assert a[k] == pytest.approx(b[k], rel=1e-6), (ranks, k)
            assert a["worst_group"] == b["worst_group"]
        assert_same_weights(last_ckpt(runs[1]), last_ckpt(runs[ranks]), ATOL)


@pytest.mark.parametrize("zero1", [False, True])
def test_resume_two_ranks(tmp_path, zero1):
    z = f"dist.zero1={str(zero1).lower()}"
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    train(full, ranks=2, steps=6, extra=[z, "train.save_every=3", "train.keep_last=5"])
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_00000003", resumed / "checkpoints" / "step_00000003")
    cmd = mpirun_cmd(2) + [str(BIN)] + args(resumed, steps=6, extra=[z, "train.save_every=3"]) + ["--resume", "auto"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "resumed from" in p.stderr
    # Same ranks, same order of every operation: bit-exact.
    assert_same_weights(full / "checkpoints" / "step_00000006", last_ckpt(resumed), 0.0)
    if zero1:
        # ZeRO-1 shards of 2 ranks restored by 1 rank (a different world size): same examples per
        # step, gradients summed in another order, so the tolerance of the 1-vs-2-rank test.
        one = tmp_path / "one"
        (one / "checkpoints").mkdir(parents=True)
        shutil.copytree(full / "checkpoints" / "step_00000003", one / "checkpoints" / "step_00000003")
        p = subprocess.run([str(BIN)] + args(one, steps=6, extra=[z, "train.save_every=3"]) + ["--resume", "auto"],
                           capture_output=True, text=True, cwd=ROOT, timeout=300)
        assert p.returncode == 0, p.stderr
        assert_same_weights(full / "checkpoints" / "step_00000006", last_ckpt(one), ATOL)


def spawn_torchrun_style(run_dir, world, extra):
    port = free_port()
    procs = []
    for r in range(world):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(world), LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([str(BIN)] + args(run_dir, steps=100000, global_batch=4, micro=2, extra=extra),
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def wait_for_checkpoint(run_dir, procs, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        # Complete checkpoints only (as last_ckpt): a step_N.tmp-PID directory can already hold its
        # trainer_state.json before the rename, and a rank killed then leaves no complete one.
        if [p for p in (Path(run_dir) / "checkpoints").glob("step_*/trainer_state.json") if len(p.parent.name) == 13]:
            return
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.2)
    raise AssertionError("no checkpoint written")


@pytest.mark.parametrize("victim,how", [(1, "kill"), (0, "kill"), (1, "hang")])
def test_dead_or_hung_rank_ends_the_job(tmp_path, victim, how):
    timeout_s = 5
    procs = spawn_torchrun_style(tmp_path, 2, [f"dist.timeout_s={timeout_s}", "train.save_every=2", "train.keep_last=2"])
    try:
        wait_for_checkpoint(tmp_path, procs)
        t0 = time.time()
        procs[victim].send_signal(signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        survivor = procs[1 - victim]
        _, err = survivor.communicate(timeout=timeout_s + 30)
        elapsed = time.time() - t0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert survivor.returncode != 0
    # A dead peer is noticed at once through the broken connection; a hung one after dist.timeout_s
    # without heartbeats (plus the collective's own timeout at most).
    assert elapsed < 2 * timeout_s + 15, elapsed
    assert f"rank {victim}" in err and ("stopped responding" in err or "no heartbeat" in err or "rank 0 (its host)" in err), err
    # The last complete checkpoint loads: trainer_state.json marks it complete, weights parse.
    ck = last_ckpt(tmp_path)
    json.loads((ck / "trainer_state.json").read_text())
    assert weights(ck)


def test_run_refused_by_rank_0_is_one_clean_error_under_mpirun(tmp_path):
    """Issue 24: rank 0 refuses a run (its output dir holds one); rank 1 printed LibTorch's TCPStore
    backtrace and "stop requested; saving a checkpoint" although it never trained, and both ranks
    printed the config table. Now: the table once, rank 0's one error line, rank 1 one line at most."""
    train(tmp_path, steps=1)
    for attempt in range(3):  # the race between rank 0's exit and rank 1's rendezvous, a few times
        cmd = mpirun_cmd(2) + [str(BIN)] + args(tmp_path, steps=1)
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
        out = p.stdout + p.stderr
        assert p.returncode == 1, out
        assert "frame #" not in out and "Exception raised from" not in out and "TCPStore" not in out, out
        assert "stop requested" not in out and "saving a checkpoint" not in out, out
        assert out.count("demo_tiny.yaml:\nkey ") == 1 and out.count("\nkey ") == 1, out  # one table, rank 0's
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith("error: rank 0: run.output_dir") and \
            "already holds a run" in errors[0], out
        others = [l for l in out.splitlines() if l.startswith("sftgo-train: rank 1")]
        assert len(others) <= 1, out
        assert "internal error" not in out, out


def test_killed_rank_under_mpirun_leaves_no_process(tmp_path):
    cmd = mpirun_cmd(2) + [str(BIN)] + args(tmp_path, steps=100000, global_batch=4, micro=2,
                                            extra=["dist.timeout_s=5", "train.save_every=2"])
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_checkpoint(tmp_path, [job])
        kids = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
        ranks = [k for k in kids if Path(f"/proc/{k}/cmdline").read_bytes().startswith(str(BIN).encode())]
        assert len(ranks) == 2, kids
        os.kill(int(ranks[1]), signal.SIGKILL)
        job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert job.returncode != 0
    # mpirun may return before the surviving rank has finished naming the dead one (it is blocked in
    # a failed collective, then exits by itself): every rank must be gone within dist.timeout_s.
    def alive(k):
        try:
            return "Z" not in Path(f"/proc/{k}/stat").read_text().split()[2]
        except FileNotFoundError:
            return False
    t0 = time.time()
    while any(alive(k) for k in ranks) and time.time() - t0 < 10:
        time.sleep(0.2)
    assert not any(alive(k) for k in ranks), "a rank outlived the job"
    json.loads((last_ckpt(tmp_path) / "trainer_state.json").read_text())


# Ctrl-C / SIGTERM to mpirun (Open MPI 4.1): mpirun sends the ranks SIGCONT at once, SIGTERM after
# odls_base_sigkill_timeout seconds (default 1) and SIGKILL as many seconds later. The ranks agree on
# the stop in the step's all-reduce, so they save one consistent step; the grace must cover a step
# plus the save (here ~0.1 s; 10 s leaves room on a loaded machine).
KILL_GRACE = 10


def rank_pids(job):
    kids = subprocess.run(["pgrep", "-P", str(job.pid)], capture_output=True, text=True).stdout.split()
    return [k for k in kids if Path(f"/proc/{k}/cmdline").read_bytes().startswith(str(BIN).encode())]


def alive(pid):
    try:
        return "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False


def start_stoppable(run_dir, grace=KILL_GRACE):
    # A constant learning rate: the schedule then does not depend on train.max_steps, so the stopped
    # run can be compared with a run that is given the final step count from the start.
    cmd = mpirun_cmd(2) + ["--mca", "odls_base_sigkill_timeout", str(grace), str(BIN)] + args(
        run_dir, steps=100000, global_batch=4, micro=2, extra=["train.save_every=0", "optim.schedule=constant"])
    job = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while len(metrics(run_dir) if (Path(run_dir) / "metrics.jsonl").exists() else []) < 3:
        assert job.poll() is None and time.time() - t0 < 120, job.communicate()
        time.sleep(0.1)
    return job


# SIGUSR1 is forwarded by mpirun at once (no grace needed); the trainer treats it as a stop request.
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1])
def test_signal_to_mpirun_saves_a_resumable_checkpoint(tmp_path, sig):
    run = tmp_path / "run"
    job = start_stoppable(run)
    ranks = rank_pids(job)
    assert len(ranks) == 2
    job.send_signal(sig)
    try:
        _, err = job.communicate(timeout=3 * KILL_GRACE + 60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert not any(alive(k) for k in ranks)
    # Both ranks saw the signal once (no "second signal", no SIGKILL before the save) and rank 0
    # saved the step they agreed on; rank 1 (which logs warnings only) ran no collective against it
    # from another step, else the save's collectives would have failed with an error here.
    assert err.count("stop requested; saving a checkpoint") == 2, err
    assert "exiting without saving" not in err and " error " not in err, err
    stops = [l for l in err.splitlines() if "stopped at step" in l]
    assert len(stops) == 1, err
    ck = last_ckpt(run)
    step = json.loads((ck / "trainer_state.json").read_text())["step"]
    assert f"stopped at step {step}/" in stops[0]
    assert step >= 3 and weights(ck)
    # Resume 2 more steps: bit-identical to a run given step + 2 steps from the start (same ranks, same
    # order of every operation, as test_resume_two_ranks).
    extra = ["train.save_every=0", "optim.schedule=constant"]
    cmd = mpirun_cmd(2) + [str(BIN)] + args(run, steps=step + 2, global_batch=4, micro=2, extra=extra) + ["--resume", "auto"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert f"resumed from {ck}" in p.stderr
    ref = tmp_path / "ref"
    train(ref, ranks=2, steps=step + 2, global_batch=4, micro=2, extra=extra)
    assert_same_weights(last_ckpt(ref), last_ckpt(run), 0.0)


def test_mpirun_gone_ranks_save_and_exit(tmp_path):
    """mpirun killed outright (SIGKILL: no signal reaches the ranks from it): each rank gets SIGTERM
    from the kernel (PR_SET_PDEATHSIG), saves the step they agree on and exits instead of training on
    as orphans. Their output pipes are gone, so this also checks that a write does not kill them."""
    job = start_stoppable(tmp_path)
    ranks = rank_pids(job)
    job.kill()
    job.wait()
    t0 = time.time()
    while any(alive(k) for k in ranks) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert not any(alive(k) for k in ranks), "ranks outlived mpirun"
    ck = last_ckpt(tmp_path)
    assert json.loads((ck / "trainer_state.json").read_text())["step"] >= 3
    assert weights(ck)


def test_second_ctrl_c_to_mpirun_leaves_no_orphans(tmp_path):
    """A second Ctrl-C makes mpirun exit at once (it sends SIGTERM and leaves). The ranks count that
    and the launcher-death SIGTERM as two signals, i.e. "exit now" by the trainer's convention: they
    must be gone within seconds, not train on without a launcher."""
    job = start_stoppable(tmp_path)
    ranks = rank_pids(job)
    job.send_signal(signal.SIGINT)
    time.sleep(1)
    job.send_signal(signal.SIGINT)
    job.communicate(timeout=30)
    t0 = time.time()
    while any(alive(k) for k in ranks) and time.time() - t0 < 20:
        time.sleep(0.2)
    assert not any(alive(k) for k in ranks), "ranks outlived mpirun"
