"""Never lose a run (issue 17): the run-directory lock and fresh-run guard, pruning that never deletes
the checkpoint just written, a full disk on every write path, `--resume auto` past a damaged newest
checkpoint, validation of what is read back from trainer_state.json, unwritable paths, and the exit
codes (docs/operations.md: 0 complete, 1 reported error, 2 command line, 75 stopped early by a signal).
Every case drives the sftgo-train binary with the tiny demo model, as test_cli_train does."""
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tmpfs_util import mounted_tmpfs

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
EXIT_STOPPED = 75
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def train_args(run_dir, steps, *extra):
    sets = {"tokenizer.path": DEMO_TOK, "model.vocab_size": 1408, "model.hidden_size": 32,
            "model.intermediate_size": 64, "model.num_layers": 2, "run.output_dir": run_dir,
            "train.max_steps": steps, "data.cache_dir": "", "model.device": "cpu", "train.num_threads": 1,
            "train.global_batch_size": 4, "train.micro_batch_size": 4}
    for kv in extra:  # a key given in `extra` replaces the default above
        k, v = kv.split("=", 1)
        sets[k] = v
    a = ["--config", ROOT / "configs/demo_tiny.yaml"]
    for k, v in sets.items():
        a += ["--set", f"{k}={v}"]
    return [str(x) for x in a]


def run(*args, **kw):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=300, **kw)


def ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stderr[-3000:]}"
    return p


def reported(p, code=1):
    """A reported error: the exit code asked for, one 'error:' line, never a crash or an internal error."""
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\n{p.stderr[-3000:]}"
    assert "internal error" not in p.stderr and "terminate called" not in p.stderr, p.stderr[-3000:]
    return p.stderr


def steps_on_disk(run_dir):
    return sorted(p.name for p in (Path(run_dir) / "checkpoints").glob("step_*"))


def metric_steps(run_dir):
    return [json.loads(l)["step"] for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
            if "eval_loss" not in l]


# ---- 1. a fresh run into a directory holding another run ------------------------------------------

def test_fresh_run_refuses_a_directory_holding_another_run(tmp_path):
    d = tmp_path / "run"
    ok(run(*train_args(d, 12, "train.save_every=5")))
    before = steps_on_disk(d)
    assert before == ["step_00000010", "step_00000012"]  # keep_last = 2
    # Today's data loss: the 3-step run pruned its own final checkpoint (sorted among the old run's),
    # wiped the old metrics and exited 0. Now it is refused, naming the directory and the way out.
    err = reported(run(*train_args(d, 3)))
    assert f"run.output_dir {d} already holds a run" in err and "--resume auto" in err and "--overwrite" in err, err
    assert steps_on_disk(d) == before and metric_steps(d) == list(range(1, 13))
    # --overwrite replaces it: only the new run's checkpoint and metrics remain, latest points at it.
    err = ok(run(*train_args(d, 3), "--overwrite")).stderr
    assert "--overwrite: deleted the previous run" in err, err
    assert steps_on_disk(d) == ["step_00000003"] and metric_steps(d) == [1, 2, 3]
    assert (d / "checkpoints" / "latest").resolve() == (d / "checkpoints" / "step_00000003").resolve()
    assert not list(d.glob(".overwritten-*"))
    # Continuing a run is what --resume is for; --overwrite with --resume is a bad command line.
    ok(run(*train_args(d, 4), "--resume", "auto"))
    assert metric_steps(d) == [1, 2, 3, 4]
    assert run(*train_args(d, 4), "--resume", "auto", "--overwrite").returncode == 2


def test_pruning_never_deletes_the_checkpoint_just_saved(tmp_path):
    # keep_last counts the step just saved and older ones: a resume from the newest checkpoint with
    # keep_last 1 keeps exactly the checkpoint it writes.
    d = tmp_path / "run"
    ok(run(*train_args(d, 6, "train.save_every=2", "train.keep_last=5")))
    assert steps_on_disk(d) == ["step_00000002", "step_00000004", "step_00000006"]
    ok(run(*train_args(d, 7, "train.keep_last=1"), "--resume", d / "checkpoints" / "step_00000006"))
    assert steps_on_disk(d) == ["step_00000007"]


def test_resume_from_an_earlier_checkpoint_is_refused_in_place_and_branches_elsewhere(tmp_path):
    # Issue 25 item 7: resuming a run from step 3 of its steps 3, 6, 9 into the same directory silently
    # replaced step 6, cut metrics.jsonl but kept step 9, and a later --resume auto came back from the
    # original step 9. A run directory holds one history: that resume is refused, nothing on disk
    # changes, and the same resume into a new directory is a branch.
    d = tmp_path / "run"
    ok(run(*train_args(d, 9, "train.save_every=3", "train.keep_last=5")))
    assert steps_on_disk(d) == ["step_00000003", "step_00000006", "step_00000009"]
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    latest = os.readlink(d / "checkpoints" / "latest")
    step3 = d / "checkpoints" / "step_00000003"
    err = reported(run(*train_args(d, 6, "optim.lr=0.05", "train.keep_last=1"), "--resume", step3))
    assert "already holds later checkpoints (step_00000006, step_00000009)" in err, err
    assert "--resume auto" in err and f"--resume {step3} --set run.output_dir=NEW_DIR" in err, err
    after = {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"}
    assert after == before and os.readlink(d / "checkpoints" / "latest") == latest
    # The branch: steps 4-6 with the new learning rate in their own directory; the original untouched.
    b = tmp_path / "branch"
    ok(run(*train_args(b, 6, "optim.lr=0.05", "train.save_every=3", "train.keep_last=1"), "--resume", step3))
    assert steps_on_disk(b) == ["step_00000006"] and metric_steps(b) == [4, 5, 6]
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file() and p.name != ".lock"} == before
    # The original continues from its newest checkpoint, one history from 1 to 10.
    ok(run(*train_args(d, 10, "train.save_every=3", "train.keep_last=5"), "--resume", "auto"))
    assert metric_steps(d) == list(range(1, 11))


# ---- 2. two runs in one directory ---------------------------------------------------------------

def wait_for_lines(path, n, proc, limit=120):
    t0 = time.time()
    while time.time() - t0 < limit:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        assert proc.poll() is None, f"exited with {proc.returncode}"
        time.sleep(0.1)
    raise AssertionError(f"{path}: fewer than {n} lines after {limit} s")


def test_second_run_is_refused_naming_the_holder_and_a_signal_stop_exits_75(tmp_path):
    d = tmp_path / "run"
    log = open(tmp_path / "first.log", "w+")  # a file, not a pipe: a full pipe would stall the run
    first = subprocess.Popen([str(BIN)] + train_args(d, 100000, "optim.schedule=constant"), cwd=ROOT,
                             stdout=log, stderr=log, text=True)
    try:
        wait_for_lines(d / "metrics.jsonl", 2, first)
        # Today both ran and one's checkpoints and metrics vanished. Now the second fails at once,
        # naming the holder; so does a --resume auto of the same directory while the first runs.
        for extra in ([], ["--resume", "auto"], ["--overwrite"]):
            err = reported(run(*train_args(d, 2), *extra))
            assert f"pid {first.pid} on host {socket.gethostname()}" in err and "in use by another" in err, err
        first.send_signal(signal.SIGINT)
        first.wait(timeout=120)
        err = (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    # Stopped early with a saved checkpoint: its own exit code, so `train && eval` stops here.
    assert first.returncode == EXIT_STOPPED, f"exit {first.returncode}\n{err[-2000:]}"
    assert "stopped at step" in err and "exit code 75" in err, err[-2000:]
    step = json.loads((d / "checkpoints" / "latest" / "trainer_state.json").read_text())["step"]
    # The lock file stays with the dead holder's pid in it: a stale lock never blocks (flock dies with
    # its process), even a lock left by kill -9.
    assert (d / ".lock").read_text().split()[0] == str(first.pid)
    ok(run(*train_args(d, step + 1, "optim.schedule=constant"), "--resume", "auto"))
    victim = subprocess.Popen([str(BIN)] + train_args(d, 100000, "optim.schedule=constant") + ["--resume", "auto"],
                              cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while (d / ".lock").read_text().split()[:1] != [str(victim.pid)]:  # it holds the lock
        assert victim.poll() is None and time.time() - t0 < 60
        time.sleep(0.05)
    victim.kill()
    victim.wait()
    assert victim.returncode == -signal.SIGKILL
    ok(run(*train_args(d, step + 2, "optim.schedule=constant"), "--resume", "auto"))


def test_exit_codes_are_documented():
    # The documented contract names the code the binary uses.
    text = (ROOT / "docs" / "operations.md").read_text()
    assert "| 75 |" in text and "--resume auto" in text


# ---- 3. disk full -------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs: writes there fail with ENOSPC."""
    yield from mounted_tmpfs(tmp_path / "disk", "size=4M")


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mnt, leave):
    """Leaves `leave` bytes free on the tmpfs (in whole 4 KiB pages)."""
    filler = mnt / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free_bytes(mnt) - leave))
    assert abs(free_bytes(mnt) - leave) <= 8192, (free_bytes(mnt), leave)


def page(n):
    return (n + 4095) // 4096 * 4096


def assert_clean_failure(mnt, run_dir, err, names):
    assert "No space left on device" in err and str(mnt) in err and names in err, err[-3000:]
    # Nothing partial left behind by the failed write: no temporary files or directories.
    leftovers = [p for p in Path(run_dir).rglob("*") if ".tmp" in p.name or ".old-" in p.name]
    assert not leftovers, leftovers
    # metrics.jsonl stays readable line by line (a cut line was removed).
    metrics = Path(run_dir) / "metrics.jsonl"
    if metrics.exists():
        text = metrics.read_text()
        assert text == "" or text.endswith("\n")
        for line in text.splitlines():
            json.loads(line)


def resume_elsewhere(tmp_path, run_dir):
    """The last complete checkpoint (if any) resumes one more step on a disk with room."""
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy, symlinks=True)
    (copy / ".lock").unlink(missing_ok=True)
    ckpts = sorted((copy / "checkpoints").glob("step_????????")) if (copy / "checkpoints").exists() else []
    if not ckpts:
        return None
    step = json.loads((ckpts[-1] / "trainer_state.json").read_text())["step"]
    ok(run(*train_args(copy, step + 1), "--resume", "auto"))
    return step


def test_disk_full_while_saving_optimizer_state(tmp_path, small_disk):
    # The sizes of a 1-step run's files, measured on a disk with room.
    ref = tmp_path / "ref"
    ok(run(*train_args(ref, 1)))
    ck = ref / "checkpoints" / "step_00000001"
    run_files = sum(page(p.stat().st_size) for p in ref.iterdir() if p.is_file())
    before_opt = sum(page(p.stat().st_size) for p in ck.iterdir() if p.name in
                     ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"))
    opt = (ck / "optimizer.pt").stat().st_size
    assert opt > 64 * 1024, opt
    # Room for everything up to half of optimizer.pt: today LibTorch's writer aborts the process
    # (terminate called after throwing c10::Error, SIGABRT) and leaves step_1.tmp-PID behind.
    d = small_disk / "run"
    fill(small_disk, run_files + before_opt + opt // 2)
    err = reported(run(*train_args(d, 1)))
    assert_clean_failure(small_disk, d, err, "optimizer.pt")
    assert "saving checkpoint" in err and "earlier checkpoints are intact" in err, err


def test_disk_full_during_training_keeps_the_last_checkpoint_usable(tmp_path, small_disk):
    # A checkpoint every step until the disk fills, whichever file that happens in.
    d = small_disk / "run"
    err = reported(run(*train_args(d, 400, "train.save_every=1", "train.keep_last=1000")))
    assert_clean_failure(small_disk, d, err, str(d))
    assert resume_elsewhere(tmp_path, d) is not None


MPIRUN = shutil.which("mpirun")


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_disk_full_while_saving_zero1_shards(tmp_path, small_disk):
    # ZeRO-1: every rank writes its optimizer shard into the checkpoints directory; a full disk there
    # used to abort the writing rank (LibTorch's writer: terminate called after throwing c10::Error).
    ref = tmp_path / "ref"
    ok(run(*train_args(ref, 1)))
    run_files = sum(page(p.stat().st_size) for p in ref.iterdir() if p.is_file())
    model = sum(page(p.stat().st_size) for p in (ref / "checkpoints" / "step_00000001").iterdir()
                if p.name in ("model.safetensors", "config.json", "tokenizer.json", "tokenizer_config.json"))
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cmd = [MPIRUN, "-np", "2", "--oversubscribe", "-x", f"MASTER_PORT={port}", "-x", "MASTER_ADDR=127.0.0.1"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    d = small_disk / "run"
    fill(small_disk, run_files + model // 2)  # not even room for the two shards
    p = subprocess.run(cmd + [str(BIN)] + train_args(d, 1, "dist.zero1=true", "train.global_batch_size=4",
                                                     "train.micro_batch_size=2", "dist.timeout_s=20"),
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode != 0 and "terminate called" not in p.stderr and "internal error" not in p.stderr, p.stderr[-3000:]
    assert "zero_rank0000" in p.stderr and "No space left on device" in p.stderr, p.stderr[-3000:]
    assert not [q for q in d.rglob("*") if ".tmp" in q.name and q.is_file()]


def test_disk_full_while_appending_metrics(tmp_path, small_disk):
    ref = tmp_path / "ref"
    ok(run(*train_args(ref, 1)))
    run_files = sum(page(p.stat().st_size) for p in ref.iterdir() if p.is_file() and p.name != "metrics.jsonl")
    d = small_disk / "run"
    # Room for the run files and two pages of metrics (~18 lines), no checkpoint until step 300:
    # today the log was cut mid-line silently and the run went on.
    fill(small_disk, run_files + 2 * 4096)
    err = reported(run(*train_args(d, 300, "train.save_every=0")))
    assert_clean_failure(small_disk, d, err, "metrics.jsonl")
    assert len(metric_steps(d)) >= 5


# ---- 4. --resume auto past a damaged newest checkpoint -----------------------------------------

def damage(ck, how):
    if how == "weights":
        p = ck / "model.safetensors"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "state":
        (ck / "trainer_state.json").write_text("{\"format\": \"sftgo-trainer-state\", \"step\": ")
    elif how == "optimizer":
        p = ck / "optimizer.pt"
        p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
    elif how == "no_optimizer":
        (ck / "optimizer.pt").unlink()


@pytest.mark.parametrize("how,why", [("weights", "model.safetensors"), ("state", "not valid JSON"),
                                     ("optimizer", "optimizer.pt is truncated"), ("no_optimizer", "optimizer.pt is missing")])
def test_resume_auto_falls_back_past_a_damaged_newest_checkpoint(tmp_path, how, why):
    d = tmp_path / "run"
    ok(run(*train_args(d, 4, "train.save_every=2", "train.keep_last=3")))
    newest, older = d / "checkpoints" / "step_00000004", d / "checkpoints" / "step_00000002"
    damage(newest, how)
    err = ok(run(*train_args(d, 6, "train.save_every=2", "train.keep_last=3"), "--resume", "auto")).stderr
    assert f"skipping damaged checkpoint {newest}" in err and why in err, err[-3000:]
    assert f"resumed from {older}" in err, err[-3000:]
    assert metric_steps(d) == [1, 2, 3, 4, 5, 6]
    # Named explicitly, a damaged checkpoint is an error naming it (no silent fallback).
    ok(run(*train_args(tmp_path / "two", 2)))
    damage(tmp_path / "two" / "checkpoints" / "step_00000002", how)
    err = reported(run(*train_args(tmp_path / "two", 3), "--resume", tmp_path / "two" / "checkpoints" / "step_00000002"))
    assert "damaged checkpoint" in err and why in err, err


def test_resume_auto_with_every_checkpoint_damaged_names_each(tmp_path):
    d = tmp_path / "run"
    ok(run(*train_args(d, 4, "train.save_every=2", "train.keep_last=3")))
    for ck in (d / "checkpoints").glob("step_????????"):
        damage(ck, "optimizer")
    err = reported(run(*train_args(d, 6), "--resume", "auto"))
    assert "every checkpoint" in err and "step_00000002" in err and "step_00000004" in err, err


# ---- validation of what is read back -------------------------------------------------------------

@pytest.mark.parametrize("field,value,expect", [
    ("step", -5, '"step" is -5, expected >= 0'),
    ("step", 99, '"step" is 99, past "total_steps"'),
    ("step", 1.5, '"step" is 1.5, expected an integer'),
    ("sampler.index", -1, '"sampler.index" is -1, expected >= 0'),
    ("rng_state", "truncate", '"rng_state" has'),
    ("rng_state", "nonhex", '"rng_state" has a non-hex character'),
    ("lambda", None, '"lambda" is null, expected a finite number'),
])
def test_trainer_state_is_validated_on_read(tmp_path, field, value, expect):
    d = tmp_path / "run"
    ok(run(*train_args(d, 2)))
    ck = d / "checkpoints" / "step_00000002"
    path = ck / "trainer_state.json"
    st = json.loads(path.read_text())
    if field == "rng_state":
        st["rng_state"] = st["rng_state"][:200] if value == "truncate" else "zz" + st["rng_state"][2:]
    elif field == "sampler.index":
        st["sampler"]["index"] = value
    else:
        st[field] = value
    path.write_text(json.dumps(st))
    # Today "step": -5 resumed with negative learning rates and a cut RNG state died with a LibTorch
    # backtrace (exit 3).
    err = reported(run(*train_args(d, 4), "--resume", ck))
    assert str(path) in err and expect in err, err


# ---- unwritable paths ----------------------------------------------------------------------------

@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only tmpfs: even root gets EROFS there."""
    yield from mounted_tmpfs(tmp_path / "ro", "ro,size=1M")


def under_a_file(tmp_path):
    f = tmp_path / "a_file"
    f.write_text("x")
    return f / "sub"  # cannot be created by anyone: its parent is a file (ENOTDIR)


def test_uncreatable_output_and_cache_dirs_and_plot_out(tmp_path):
    bad = under_a_file(tmp_path)
    # Today: "internal error: filesystem error: cannot create directories", exit 3.
    err = reported(run(*train_args(bad, 1)))
    assert f"run.output_dir {bad}" in err and "Not a directory" in err and "hint:" in err, err
    err = reported(run(*train_args(tmp_path / "run", 1, f"data.cache_dir={bad}")))
    assert f"data.cache_dir {bad}" in err and "Not a directory" in err, err
    # Other commands that write into data.cache_dir: the path and the OS reason (today: exit 3).
    err = reported(run("data", *train_args(tmp_path / "run", 1, f"data.cache_dir={bad}")))
    assert str(bad) in err and "Not a directory" in err, err
    ok(run(*train_args(tmp_path / "run", 1)))
    err = reported(run("plot", tmp_path / "run", "-o", bad / "x.svg"))
    assert str(bad) in err and "Not a directory" in err, err


def test_read_only_output_and_cache_dirs(tmp_path, read_only_dir):
    err = reported(run(*train_args(read_only_dir / "run", 1)))
    assert f"run.output_dir {read_only_dir / 'run'}" in err and "Read-only file system" in err, err
    err = reported(run(*train_args(read_only_dir, 1)))  # exists, but cannot be written
    assert f"run.output_dir {read_only_dir}" in err and "Read-only file system" in err, err
    err = reported(run(*train_args(tmp_path / "run", 1, f"data.cache_dir={read_only_dir}")))
    assert f"data.cache_dir {read_only_dir}" in err and "Read-only file system" in err, err


def test_plot_reads_a_metrics_log_cut_mid_line(tmp_path):
    d = tmp_path / "run"
    ok(run(*train_args(d, 3)))
    m = d / "metrics.jsonl"
    m.write_text(m.read_text() + '{"step": 4, "loss": 2.')  # a writer killed mid-line
    ok(run("plot", d))
    assert (d / "group_losses.svg").read_text().startswith("<svg")
    # ... and a resume drops the cut line, keeping the complete ones.
    ok(run(*train_args(d, 4), "--resume", "auto"))
    assert metric_steps(d) == [1, 2, 3, 4]


def test_run_lock_never_follows_a_link(tmp_path):
    """RUN_DIR/.lock that is a symlink (or a hard link) to another file is refused (exit 1, naming
    .lock), and that file is left as it was: the lock is truncated and rewritten with 'PID host'."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    d = tmp_path / "run"
    d.mkdir()
    (d / ".lock").symlink_to(victim)
    err = reported(run(*train_args(d, 1)))
    assert f"{d / '.lock'} is a symbolic link" in err, err
    assert victim.read_text() == "precious\n"
    assert not (d / "checkpoints").exists()
    (d / ".lock").unlink()
    os.link(victim, d / ".lock")
    err = reported(run(*train_args(d, 1)))
    assert f"{d / '.lock'} has 2 hard links" in err, err
    assert victim.read_text() == "precious\n"
    (d / ".lock").unlink()
    ok(run(*train_args(d, 1)))  # a plain lock file is created as before
    assert not (d / ".lock").is_symlink() and (d / ".lock").read_text().split()[0].isdigit()


def test_adapter_path_without_lora_is_refused(tmp_path):
    """lora.adapter_path with lora.enabled false used to train the whole model (exit 0), ignoring the
    adapter: now a config error naming both keys, from `config` and from a run, before anything runs."""
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    for p in (run("config", ROOT / "configs/demo_tiny.yaml", "--set", f"lora.adapter_path={adapter}"),
              run(*train_args(tmp_path / "run", 1, f"lora.adapter_path={adapter}"))):
        err = reported(p)
        assert f"lora.adapter_path is '{adapter}' but lora.enabled is false" in err, err
        assert "set lora.enabled: true" in err, err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_trainer_state_duplicate_step_unknown_version_and_empty_resume(tmp_path):
    """A second "step" key (the JSON parser kept the last) and "version": 99 were resumed from; both
    are refused naming the file (exit 1). `--resume ""` silently started a fresh run: a bad command
    line now (exit 2)."""
    d = tmp_path / "run"
    ok(run(*train_args(d, 2)))
    path = d / "checkpoints" / "step_00000002" / "trainer_state.json"
    good = path.read_text()
    path.write_text(good.replace("{", '{"step": 1,', 1))
    err = reported(run(*train_args(d, 4), "--resume", path.parent))
    assert f'{path}: field "step" appears twice' in err, err
    st = json.loads(good)
    st["version"] = 99
    path.write_text(json.dumps(st))
    err = reported(run(*train_args(d, 4), "--resume", "auto"))
    assert f'{path}: field "version" is 99, expected 1' in err, err
    path.write_text(good)
    err = reported(run(*train_args(d, 4), "--resume", ""), code=2)
    assert "--resume" in err and "give a checkpoint directory or 'auto'" in err, err
    assert metric_steps(d) == [1, 2]  # nothing ran


def mpirun_train(run_dir, steps, *extra, resume=None):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    cmd = [MPIRUN, "-np", "2", "--oversubscribe", "-x", f"MASTER_PORT={port}", "-x", "MASTER_ADDR=127.0.0.1"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return subprocess.run(cmd + [str(BIN)] + train_args(run_dir, steps, "dist.zero1=true", "train.global_batch_size=4",
                                                         "train.micro_batch_size=2", "dist.timeout_s=20", *extra)
                          + (["--resume", resume] if resume else []),
                          capture_output=True, text=True, cwd=ROOT, timeout=300)


@pytest.mark.skipif(MPIRUN is None, reason="mpirun not installed")
def test_zero1_shards_are_tied_together_by_a_manifest(tmp_path):
    """Issue 25 item 9: a ZeRO-1 checkpoint's shard files were not checked against each other, so a
    shard replaced by another (rank 0's copied over rank 1's, or rank 1's of another run at the same
    step) resumed and the loss diverged. zero_manifest.json records each shard's size and digest and
    each rank checks the files it reads: exit 1 naming the file. A truncated shard is named too."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d, seed in ((a, 1), (b, 2)):
        p = mpirun_train(d, 2, f"run.seed={seed}")
        assert p.returncode == 0, p.stderr[-3000:]
    ck = a / "checkpoints" / "step_00000002"
    manifest = json.loads((ck / "zero_manifest.json").read_text())
    assert [s["file"] for s in manifest["shards"]] == ["zero_rank00000_of_00002.pt", "zero_rank00001_of_00002.pt"]
    shard1 = ck / "zero_rank00001_of_00002.pt"
    good = shard1.read_bytes()
    for name, data in (("rank 0's shard", (ck / "zero_rank00000_of_00002.pt").read_bytes()),
                       ("another run's rank 1", (b / "checkpoints/step_00000002/zero_rank00001_of_00002.pt").read_bytes()),
                       ("truncated", good[: len(good) // 2])):
        shard1.write_bytes(data)
        p = mpirun_train(a, 4, "run.seed=1", resume="auto")
        assert p.returncode == 1, f"{name}: exit {p.returncode}\n{p.stderr[-3000:]}"
        assert "zero_rank00001_of_00002.pt" in p.stderr and "internal error" not in p.stderr, f"{name}\n{p.stderr[-3000:]}"
        assert metric_steps(a) == [1, 2], name
    shard1.write_bytes(good)
    p = mpirun_train(a, 4, "run.seed=1", resume="auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert metric_steps(a) == [1, 2, 3, 4]
