#!/usr/bin/env python3
"""Reports a run's metrics.jsonl to TensorBoard, W&B and MLflow (docs/tracking.md).

    sftgo_track.py RUN_DIR --to tensorboard,wandb,mlflow [--follow] [--fresh] [--sftgo BIN]

The trainer (rank 0) starts it with --follow when logging.report_to is set: it tails metrics.jsonl
and stops once its standard input reaches end of file, which happens when the trainer closes the pipe
or dies. `sftgo-train track RUN_DIR --to ...` runs it without --follow: it sends what the file holds.
Training never waits for it and never needs it: metrics.jsonl stays the record, and a tracker that
fails is reported once and left out.

Each line becomes one scalar per number at the line's step: train/<field> for training lines,
eval/<field without eval_> for held-out lines (null, a non-finite value, becomes NaN; true/false
become 1/0). RUN_DIR/tracking.json keeps each tracker's run id and the last step it received of each
kind, so a resumed run continues the same tracker run and no step is sent twice; --fresh (a run that
starts at step 0) forgets it.

Where the data goes: TensorBoard event files in RUN_DIR/tensorboard (torch.utils.tensorboard); W&B
through its client under RUN_DIR/wandb (WANDB_MODE=offline keeps it local, WANDB_PROJECT names the
project, default sftgo); MLflow through its client to MLFLOW_TRACKING_URI, by default the SQLite store
RUN_DIR/mlflow.db with artifacts in RUN_DIR/mlartifacts (MLFLOW_EXPERIMENT_NAME, default sftgo).
"""
import argparse
import fcntl
import json
import math
import os
import select
import subprocess
import sys
import time
import uuid
import warnings

TRACKERS = ("tensorboard", "wandb", "mlflow")
EXIT_WARNED = 3  # a tracker or the follower failed; each failure was reported in one warning line


def warn(text):
    print(f"warning: tracking: {text}; metrics.jsonl holds every step", file=sys.stderr, flush=True)


def line_scalars(record):
    """(kind, {tag: value}) of one metrics.jsonl line."""
    kind = "eval" if any(k.startswith("eval_") for k in record) else "train"
    out = {}
    for key, value in record.items():
        if key == "step":
            continue
        if value is None:
            value = math.nan  # the trainer writes non-finite numbers as null
        elif isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, (int, float)):
            continue
        name = key[len("eval_"):] if kind == "eval" and key.startswith("eval_") else key
        out[f"{kind}/{name}"] = float(value)
    return kind, out


class LineReader:
    """The complete lines appended to a file since the last call (a line still being written waits)."""

    def __init__(self, path):
        self.path, self.offset, self.partial = path, 0, b""

    def new_records(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        out = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                out.append(record)
        return out


def flat(config, prefix=""):
    out = {}
    for key, value in (config or {}).items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        elif isinstance(value, list):  # list keys (logging.report_to): the comma form they also load from
            out[f"{prefix}{key}"] = ",".join(str(v) for v in value)
        else:
            out[f"{prefix}{key}"] = value
    return out


class TensorBoard:
    def __init__(self, ctx, state):
        from torch.utils.tensorboard import SummaryWriter

        # A fresh run in a directory that held another (--overwrite) starts with TensorBoard's own
        # restart marker at step 0, which hides the earlier run's events in that directory.
        self.writer = SummaryWriter(log_dir=os.path.join(ctx.run_dir, "tensorboard"),
                                    purge_step=0 if ctx.fresh else None)
        if not state.get("config_sent") and ctx.config:
            from torch.utils.tensorboard.summary import hparams

            values = {k: v for k, v in flat(ctx.config).items() if isinstance(v, (int, float, str, bool))}
            for summary in hparams(values, {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + ctx.config_text + "\n```", 0)
            state["config_sent"] = True

    def send(self, kind, step, scalars, wall):
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step, walltime=wall)

    def flush(self):
        self.writer.flush()

    def finish(self, artifacts):
        self.writer.close()  # TensorBoard has no artifact store


class Wandb:
    def __init__(self, ctx, state):
        os.environ.setdefault("WANDB_SILENT", "true")
        import wandb

        state.setdefault("id", uuid.uuid4().hex[:12])
        settings = wandb.Settings(console="off", x_disable_stats=True, save_code=False, disable_git=True,
                                  silent=True, init_timeout=60)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "sftgo"), id=state["id"], name=ctx.name,
                              dir=ctx.run_dir, config=ctx.config, resume="allow", settings=settings)
        self.run_dir = ctx.run_dir

    def send(self, kind, step, scalars, wall):
        self.run.log(scalars, step=step)

    def flush(self):
        pass  # wandb-core writes its log on its own

    def finish(self, artifacts):
        for path in artifacts:
            self.run.save(path, base_path=self.run_dir, policy="now")
        self.run.finish()


class Mlflow:
    def __init__(self, ctx, state):
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        logging_quiet()  # after the import, which sets mlflow's own levels

        uri = state.get("uri") or os.environ.get("MLFLOW_TRACKING_URI") or \
            "sqlite:///" + os.path.join(os.path.abspath(ctx.run_dir), "mlflow.db")
        self.client = MlflowClient(tracking_uri=uri)
        state["uri"] = uri
        if "run_id" not in state:
            name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "sftgo")
            exp = self.client.get_experiment_by_name(name)
            location = None if os.environ.get("MLFLOW_TRACKING_URI") else \
                os.path.join(os.path.abspath(ctx.run_dir), "mlartifacts")
            exp_id = exp.experiment_id if exp else self.client.create_experiment(name, artifact_location=location)
            state["run_id"] = self.client.create_run(exp_id, run_name=ctx.name).info.run_id
        self.run_id = state["run_id"]
        self.client.update_run(self.run_id, status="RUNNING")
        # Parameters cannot change once logged: a resume with a changed config keeps the first value.
        have = self.client.get_run(self.run_id).data.params
        params = [Param(k, str(v)[:6000]) for k, v in flat(ctx.config).items() if k not in have]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.pending = []

    def send(self, kind, step, scalars, wall):
        from mlflow.entities import Metric

        self.pending += [Metric(tag, value, int(wall * 1000), step) for tag, value in scalars.items()]

    def flush(self):
        for i in range(0, len(self.pending), 1000):
            self.client.log_batch(self.run_id, metrics=self.pending[i:i + 1000])
        self.pending = []

    def finish(self, artifacts):
        for path in artifacts:
            self.client.log_artifact(self.run_id, path)
        self.client.set_terminated(self.run_id)


def logging_quiet():
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.ERROR)


CLASSES = {"tensorboard": TensorBoard, "wandb": Wandb, "mlflow": Mlflow}


class Context:
    def __init__(self, run_dir, fresh):
        self.run_dir, self.fresh = run_dir, fresh
        self.config_text, self.config, self.name = "", {}, os.path.basename(os.path.abspath(run_dir))
        path = os.path.join(run_dir, "resolved_config.yaml")
        if os.path.exists(path):
            import yaml

            with open(path) as f:
                self.config_text = f.read()
            self.config = yaml.safe_load(self.config_text) or {}
            self.name = str(self.config.get("run", {}).get("name") or self.name)


class Reporter:
    """The trackers of one run, each dropped with one warning at its first failure."""

    def __init__(self, args):
        self.ctx = Context(args.run_dir, args.fresh)
        self.state_path = os.path.join(args.run_dir, "tracking.json")
        # One follower per run directory at a time: a resume's waits for the killed run's to finish.
        self.lock = open(os.path.join(args.run_dir, "tracking.lock"), "a")
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        self.state = {}
        if not args.fresh and os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.state = json.load(f)
        self.live, self.failed = {}, False
        for name in args.to:
            state = self.state.setdefault(name, {})
            if args.fresh:
                state.clear()
            state.setdefault("last", {})
            self.guard(name, lambda: self.live.__setitem__(name, CLASSES[name](self.ctx, state)), "could not start")
        self.save_state()

    def guard(self, name, fn, what):
        try:
            fn()
            return True
        except BaseException as e:  # a tracker's failure, whatever it is, must not end the others
            if isinstance(e, KeyboardInterrupt):
                raise
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            warn(f"{name}: {what} ({type(e).__name__}: {message}); it receives nothing more from this run")
            self.live.pop(name, None)
            self.failed = True
            return False

    def send(self, records):
        if not records:
            return
        wall = time.time()
        for name, tracker in list(self.live.items()):
            last = self.state[name]["last"]

            def push():
                sent = dict(last)
                for record in records:
                    kind, scalars = line_scalars(record)
                    if record["step"] <= sent.get(kind, -1):
                        continue  # sent before the resume's checkpoint: each step once
                    tracker.send(kind, record["step"], scalars, wall)
                    sent[kind] = record["step"]
                tracker.flush()
                last.update(sent)

            self.guard(name, push, "could not send metrics")
        self.save_state()

    def finish(self, sftgo):
        artifacts = [os.path.join(self.ctx.run_dir, "metrics.jsonl")]
        plot = os.path.join(self.ctx.run_dir, "group_losses.png")
        if sftgo and self.live:
            done = subprocess.run([sftgo, "plot", self.ctx.run_dir, "--out", plot], capture_output=True)
            if done.returncode == 0:
                artifacts.append(plot)
        for name, tracker in list(self.live.items()):
            self.guard(name, lambda: tracker.finish(artifacts), "could not finish")

    def save_state(self):
        tmp = self.state_path + ".tmp"
        try:
            with open(tmp, "w") as f:
                json.dump(self.state, f, indent=1)
            os.replace(tmp, self.state_path)
        except OSError as e:
            if not getattr(self, "state_warned", False):
                warn(f"cannot write {self.state_path} ({e}); a resume would start new tracker runs")
                self.state_warned = True


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir")
    p.add_argument("--to", required=True, help="comma-separated: tensorboard, wandb, mlflow")
    p.add_argument("--follow", action="store_true", help="tail metrics.jsonl until standard input ends")
    p.add_argument("--fresh", action="store_true", help="forget tracking.json: new tracker runs")
    p.add_argument("--sftgo", default="", help="the sftgo-train binary, to draw the group-loss plot")
    args = p.parse_args(argv)
    args.to = [t for t in args.to.split(",") if t]
    bad = [t for t in args.to if t not in TRACKERS]
    if bad or not args.to:
        p.error(f"--to: expected names from {', '.join(TRACKERS)}, got '{','.join(args.to)}'")
    if not os.path.isdir(args.run_dir):
        p.error(f"{args.run_dir}: not a directory")
    return args


def follow(reporter, reader):
    """Sends lines as they come until standard input ends (the trainer finished or died)."""
    while True:
        reporter.send(reader.new_records())
        ready, _, _ = select.select([0], [], [], 1.0)
        if ready and not os.read(0, 4096):
            try:  # the trainer is done and waits for us: a normal share of the CPU (root only)
                os.setpriority(os.PRIO_PROCESS, 0, 0)
            except OSError:
                pass
            return


def main(argv):
    args = parse_args(argv)
    warnings.simplefilter("ignore")  # the clients' deprecation notes are not the user's business
    if args.follow:
        # The lowest CPU priority while the trainer runs. (SCHED_IDLE would be gentler still, but on a
        # shared, busy machine it starves the follower behind every other process, not the trainer.)
        os.setpriority(os.PRIO_PROCESS, 0, 19)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)  # clients that print progress must not mix with the trainer's output
    try:
        reporter = Reporter(args)
        reader = LineReader(os.path.join(args.run_dir, "metrics.jsonl"))
        if args.follow:
            follow(reporter, reader)
        reporter.send(reader.new_records())
        reporter.finish(args.sftgo)
        if reporter.failed:
            return EXIT_WARNED
    except KeyboardInterrupt:
        return EXIT_WARNED
    except Exception as e:  # one line, never a traceback in the trainer's log
        warn(f"the follower stopped ({type(e).__name__}: {e})")
        return EXIT_WARNED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
