"""Tracker reporting (issue 28): logging.report_to feeds TensorBoard, W&B and MLflow from metrics.jsonl.

Real clients, no network: W&B in offline mode, MLflow with its SQLite store in the run directory. Each
tracker's data is read back with the tracker's own reader (TensorBoard's EventAccumulator, MLflow's
client, the records of W&B's offline run log as `wandb leet inspect` prints them, parsed into wandb's
own protobuf Record) and compared with metrics.jsonl: every step once, every number equal (TensorBoard
stores float32 scalars, so there the expected value is the line's number rounded to float32; W&B and
MLflow keep float64, compared exactly).
"""
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tmpfs_util import mounted_tmpfs

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
VENV_BIN = Path(sys.executable).parent
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
# Fields that measure time, so two runs of the same steps differ there.
TIMING = {"step_s", "elapsed_s", "tokens_per_s", "eval_s", "mfu", "comm_s"}
BASE = ["--config", "configs/demo_tiny.yaml", "--set", "train.num_threads=2", "--set", "train.save_final=false",
        "--set", "data.eval_path=data/demo/demo_sft.jsonl", "--set", "train.eval_every=3"]


def env_offline():
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true")
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_DIR", "WANDB_RUN_ID", "WANDB_RESUME"):
        env.pop(key, None)
    return env


def train(out, *extra, timeout=400):
    args = [str(BIN), *BASE, "--set", f"run.output_dir={out}", *extra]
    return subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=timeout, env=env_offline())


def lines(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(records, skip=()):
    """{tag: {step: value}} as the issue defines them: train/<field>, eval/<field without eval_>."""
    out = {}
    for r in records:
        kind = "eval" if any(k.startswith("eval_") for k in r) else "train"
        for key, value in r.items():
            if key == "step" or key in skip:
                continue
            if value is None:
                value = math.nan
            if isinstance(value, (bool, int, float)):
                name = key[5:] if kind == "eval" and key.startswith("eval_") else key
                out.setdefault(f"{kind}/{name}", {})[r["step"]] = float(value)
    return out


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


def check_scalars(got, want, rounding=float):
    """got {tag: [(step, value), ...]} holds each step once and the values of want exactly."""
    assert set(got) >= set(want), sorted(set(want) - set(got))
    for tag, by_step in want.items():
        steps = [s for s, _ in got[tag]]
        assert len(steps) == len(set(steps)), f"{tag}: a step twice: {steps}"
        assert sorted(steps) == sorted(by_step), f"{tag}: steps {steps}, metrics.jsonl has {sorted(by_step)}"
        for step, value in got[tag]:
            assert same(value, rounding(by_step[step])), f"{tag} step {step}: {value} != {by_step[step]}"


# ---- the trackers' own readers ------------------------------------------------------------------------

def tensorboard_scalars(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}, acc


def wandb_runs(run_dir):
    """{offline run dir: [Record, ...]} through wandb's own log reader and its protobuf Record."""
    from google.protobuf import text_format
    from wandb.proto import wandb_internal_pb2

    out = {}
    for d in sorted((Path(run_dir) / "wandb").glob("offline-run-*")):
        text = subprocess.run([str(VENV_BIN / "wandb"), "leet", "inspect", str(d)], capture_output=True, text=True,
                              check=True, timeout=120).stdout
        chunks = re.split(r"^# record \d+: \w+\n", text, flags=re.M)[1:]
        assert chunks, f"wandb leet inspect printed no records for {d}:\n{text[:2000]}"
        out[d] = [text_format.Parse(c, wandb_internal_pb2.Record(), allow_unknown_field=True) for c in chunks]
    return out


def wandb_scalars(records):
    got = {}
    for rec in records:
        if rec.WhichOneof("record_type") != "history":
            continue
        for item in rec.history.item:
            key = "/".join(item.nested_key) if item.nested_key else item.key
            if not key.startswith("_"):
                got.setdefault(key, []).append((rec.history.step.num, float(json.loads(item.value_json))))
    return got


def mlflow_client(run_dir):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{Path(run_dir).resolve()}/mlflow.db")


def mlflow_scalars(client, run_id):
    keys = client.get_run(run_id).data.metrics.keys()
    return {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in keys}


def tracking_state(run_dir):
    return json.loads((Path(run_dir) / "tracking.json").read_text())


def tracker_warnings(stderr):
    return [l for l in stderr.splitlines() if "warn" in l.lower() and ("track" in l or "follower" in l)]


# ---- tests -------------------------------------------------------------------------------------------

def test_every_scalar_reaches_each_tracker_exactly(tmp_path):
    import numpy as np

    out = tmp_path / "run"
    p = train(out, "--set", "train.max_steps=6", "--set", "logging.report_to=tensorboard,wandb,mlflow")
    assert p.returncode == 0, p.stderr[-3000:]
    assert not tracker_warnings(p.stderr), p.stderr[-3000:]
    records = lines(out)
    want = expected_scalars(records)
    assert {"train/loss", "train/loss_ce", "train/loss_imp", "train/loss_unimp", "train/worst_group",
            "train/count_imp", "train/count_unimp", "train/lambda", "train/lr", "train/grad_norm",
            "train/tokens_per_s", "eval/loss", "eval/loss_imp"} <= set(want)
    assert sorted(want["eval/loss"]) == [0, 3, 6]

    tb, acc = tensorboard_scalars(out)
    check_scalars(tb, want, rounding=lambda v: float(np.float32(v)))  # TensorBoard keeps float32
    assert "config" in acc.Tags()["tensors"] or any("config" in t for t in acc.Tags()["tensors"])

    runs = wandb_runs(out)
    assert len(runs) == 1
    (run_dir, records_wb), = runs.items()
    check_scalars(wandb_scalars(records_wb), want)
    run_rec = next(r.run for r in records_wb if r.WhichOneof("record_type") == "run")
    assert run_rec.run_id == tracking_state(out)["wandb"]["id"]
    config = {u.key: json.loads(u.value_json) for u in run_rec.config.update}
    assert config["train"]["max_steps"] == 6 and config["run"]["output_dir"] == str(out)
    files = run_dir / "files"
    assert (files / "metrics.jsonl").read_text() == (out / "metrics.jsonl").read_text()
    assert (files / "group_losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    client = mlflow_client(out)
    run_id = tracking_state(out)["mlflow"]["run_id"]
    check_scalars(mlflow_scalars(client, run_id), want)
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["train.max_steps"] == "6" and run.data.params["logging.report_to"] == \
        "tensorboard,wandb,mlflow"
    arts = {a.path for a in client.list_artifacts(run_id)}
    assert {"metrics.jsonl", "group_losses.png"} <= arts
    local = Path(client.download_artifacts(run_id, "metrics.jsonl", str(tmp_path)))
    assert local.read_text() == (out / "metrics.jsonl").read_text()


def test_resume_continues_the_same_tracker_runs(tmp_path):
    """A run killed at once (SIGKILL) after step 5 with its newest checkpoint at 3, then --resume auto:
    each tracker run holds steps 1..9 once, under the first run's id."""
    out = tmp_path / "run"
    args = [str(BIN), *BASE, "--set", f"run.output_dir={out}", "--set", "train.max_steps=9", "--set",
            "train.save_every=3", "--set", "logging.report_to=tensorboard,wandb,mlflow"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env_offline(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and sum(1 for r in lines(out) if "loss_ce" in r and r["step"] >= 5):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1]
    killed_at = max(r["step"] for r in lines(out))
    assert 5 <= killed_at < 9, stderr[-3000:]
    # The follower sees its input end with the trainer and sends what the killed run wrote.
    follower = int(re.search(r"follower process (\d+)", stderr).group(1))
    while Path(f"/proc/{follower}").exists() and time.time() < deadline:
        time.sleep(0.1)
    first = tracking_state(out)
    assert all(first[t]["last"]["train"] == killed_at for t in ("tensorboard", "wandb", "mlflow")), first

    p = train(out, "--set", "train.max_steps=9", "--set", "train.save_every=3", "--set",
              "logging.report_to=tensorboard,wandb,mlflow", "--resume", "auto")
    assert p.returncode == 0, p.stderr[-3000:]
    assert "resum" in p.stderr.lower()
    assert not tracker_warnings(p.stderr), p.stderr[-3000:]
    records = lines(out)
    assert [r["step"] for r in records if "loss_ce" in r] == list(range(1, 10))
    state = tracking_state(out)
    assert state["wandb"]["id"] == first["wandb"]["id"] and state["mlflow"]["run_id"] == first["mlflow"]["run_id"]
    # Steps the killed run sent after its checkpoint were not sent again; on CPU the resumed run
    # recomputes them bit for bit, so every field but the timings matches the final metrics.jsonl.
    want = expected_scalars(records, skip=TIMING)
    import numpy as np

    tb, _ = tensorboard_scalars(out)
    check_scalars({k: v for k, v in tb.items() if k in want}, want, rounding=lambda v: float(np.float32(v)))
    runs = wandb_runs(out)
    assert len(runs) == 2 and all(d.name.endswith("-" + state["wandb"]["id"]) for d in runs)
    merged = {}
    for records_wb in runs.values():
        for tag, pts in wandb_scalars(records_wb).items():
            merged.setdefault(tag, []).extend(pts)
    check_scalars({k: v for k, v in merged.items() if k in want}, want)
    client = mlflow_client(out)
    assert len(client.search_runs([client.get_experiment_by_name("sftgo").experiment_id])) == 1
    check_scalars({k: v for k, v in mlflow_scalars(client, state["mlflow"]["run_id"]).items() if k in want}, want)


def test_overwritten_run_starts_new_tracker_runs(tmp_path):
    """--overwrite replaces a run: TensorBoard's restart marker hides the old run's events in the same
    directory, so the new run's steps show once each."""
    import numpy as np

    out = tmp_path / "run"
    for steps, extra in ((6, []), (4, ["--overwrite"])):
        p = train(out, "--set", f"train.max_steps={steps}", "--set", "logging.report_to=tensorboard", *extra)
        assert p.returncode == 0, p.stderr[-3000:]
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 2
    tb, _ = tensorboard_scalars(out)
    want = expected_scalars(lines(out))
    assert sorted(want["train/loss"]) == [1, 2, 3, 4]
    check_scalars({k: v for k, v in tb.items() if k in want}, want, rounding=lambda v: float(np.float32(v)))


def comparable(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in lines(run_dir)]


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("plain") / "run"
    p = train(out, "--set", "train.max_steps=6")
    assert p.returncode == 0, p.stderr[-3000:]
    return out


def python_without_wandb(tmp_path):
    """A Python with PyYAML (what the follower reads the config with) and no wandb: the client is not
    installed there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    import yaml

    src = Path(yaml.__file__).parent
    shutil.copytree(src, site / "yaml")
    if (src.parent / "_yaml").exists():
        shutil.copytree(src.parent / "_yaml", site / "_yaml")
    py = venv / "bin" / "python"
    assert subprocess.run([str(py), "-c", "import wandb"], capture_output=True).returncode != 0
    return py


def test_missing_wandb_client_costs_one_warning(tmp_path, plain_run):
    out = tmp_path / "run"
    py = python_without_wandb(tmp_path)
    p = train(out, "--set", "train.max_steps=6", "--set", "logging.report_to=wandb", "--set", f"logging.python={py}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert comparable(out) == comparable(plain_run)
    warns = tracker_warnings(p.stderr)
    assert len(warns) == 1 and "wandb" in warns[0] and "ModuleNotFoundError" in warns[0], p.stderr[-3000:]


def test_read_only_wandb_directory_costs_one_warning(tmp_path, plain_run):
    out = tmp_path / "run"
    out.mkdir()
    for _ in mounted_tmpfs(out / "wandb", "ro,size=1m"):
        p = train(out, "--set", "train.max_steps=6", "--set", "logging.report_to=wandb")
        assert p.returncode == 0, p.stderr[-3000:]
        assert comparable(out) == comparable(plain_run)
        warns = tracker_warnings(p.stderr)
        assert len(warns) == 1 and "wandb" in warns[0], p.stderr[-3000:]


def test_killed_follower_costs_one_warning(tmp_path, plain_run):
    out = tmp_path / "run"
    args = [str(BIN), *BASE, "--set", f"run.output_dir={out}", "--set", "train.max_steps=6", "--set",
            "logging.report_to=tensorboard"]
    proc = subprocess.Popen(args, cwd=ROOT, env=env_offline(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    stderr = []
    for line in proc.stderr:
        stderr.append(line)
        m = re.search(r"follower process (\d+)", line)
        if m:
            os.kill(int(m.group(1)), signal.SIGKILL)
    proc.wait(timeout=300)
    text = "".join(stderr)
    assert proc.returncode == 0, text[-3000:]
    assert comparable(out) == comparable(plain_run)
    warns = tracker_warnings(text)
    assert len(warns) == 1 and "killed by signal 9" in warns[0] and "sftgo-train track" in warns[0], text[-3000:]


def test_track_command_sends_a_finished_run_once(tmp_path, plain_run):
    import numpy as np

    out = tmp_path / "run"
    shutil.copytree(plain_run, out, ignore=shutil.ignore_patterns("checkpoints"))
    for _ in range(2):  # the second call finds every step in tracking.json and sends nothing
        p = subprocess.run([str(BIN), "track", str(out), "--to", "tensorboard"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300, env=env_offline())
        assert p.returncode == 0, p.stderr[-3000:]
    tb, _ = tensorboard_scalars(out)
    check_scalars(tb, expected_scalars(lines(out)), rounding=lambda v: float(np.float32(v)))
    p = subprocess.run([str(BIN), "track", str(out), "--to", "neptune"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "neptune" in p.stderr


def test_unknown_tracker_is_refused_naming_the_key():
    p = subprocess.run([str(BIN), "config", "--config", "configs/demo_tiny.yaml", "--set",
                        "logging.report_to=tensorboard,comet"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "logging.report_to" in p.stderr and "'comet'" in p.stderr, p.stderr
