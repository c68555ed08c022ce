"""docs/metrics.md against what the trainer writes: its commands run as written (in a sandbox laid out
like the repository), and its field table must list exactly the fields of the metrics.jsonl they
produce, in both directions. Fields written only on a GPU or with several ranks cannot appear on this
CPU run: they must be in the writer's source (src/train/metrics.cpp), and with mpirun installed a
2-rank run must write the several-ranks ones."""
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DOC = ROOT / "docs" / "metrics.md"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
sys.path.insert(0, str(Path(__file__).parent))
from launch_util import MPIRUN, mpirun_cmd  # noqa: E402


def doc_commands():
    cmds, block = [], None
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```sh" and block is None else None
            continue
        if block is not None and line.strip() and not line.lstrip().startswith("#"):
            cmds.append(line.strip())
    return cmds


def doc_table():
    """field -> (line, written) from the table's rows: | `field` | step/eval/both | always/... | ..."""
    rows = {}
    for line in DOC.read_text().splitlines():
        m = re.match(r"^\| `([a-z_]+)` \| (step|eval|both) \| ([^|]+) \|", line)
        if m:
            assert m.group(1) not in rows, f"{m.group(1)} listed twice"
            rows[m.group(1)] = (m.group(2), m.group(3).strip())
    return rows


def expected(rows, kind):
    """Fields a CPU, one-process run writes on a `kind` line (step or eval)."""
    return {f for f, (line, when) in rows.items() if line in (kind, "both") and when == "always"}


def written_keys(path):
    step, ev = set(), set()
    lines = [json.loads(l) for l in path.read_text().splitlines()]
    for j in lines:
        (ev if "eval_loss" in j else step).update(j)
    return lines, step, ev


def test_table_matches_the_writer_source():
    """Every key the writer can emit (src/train/metrics.cpp's to_json) is in the table, and back."""
    src = (ROOT / "src/train/metrics.cpp").read_text()
    keys = set(re.findall(r'\{"([a-z_]+)", ', src)) | set(re.findall(r'j\["([a-z_]+)"\] =', src))
    rows = doc_table()
    assert len(rows) >= 25
    assert keys == set(rows), f"in the writer, not the table: {keys - set(rows)}; in the table only: {set(rows) - keys}"


def test_documented_commands_write_exactly_the_documented_fields(tmp_path):
    sb = tmp_path / "repo"
    sb.mkdir()
    for name in ("configs", "data"):
        (sb / name).symlink_to(ROOT / name)
    (sb / "build").symlink_to(BUILD)
    cmds = doc_commands()
    assert [c.split()[0] for c in cmds] == ["build/bin/sftgo-train", "tail"], cmds
    out = ""
    for cmd in cmds:
        words = shlex.split(cmd)
        extra = ["--set", f"data.cache_dir={tmp_path / 'cache'}"] if words[0].endswith("sftgo-train") else []
        p = subprocess.run(words + extra, cwd=sb, capture_output=True, text=True)
        assert p.returncode == 0, (cmd, p.stderr[-3000:])
        out = p.stdout
    run_dir = sb / "runs" / "metrics_demo"
    lines, step_keys, eval_keys = written_keys(run_dir / "metrics.jsonl")
    # The page's `tail -n 2` shows the last step line and the final eval line.
    assert [json.loads(l) for l in out.splitlines()] == lines[-2:]
    assert [j["step"] for j in lines if "eval_loss" not in j] == [1, 2, 3, 4]
    evals = [j["step"] for j in lines if "eval_loss" in j]  # every train.eval_every = 2 steps (a step-0 pass allowed)
    assert evals[-2:] == [2, 4] and set(evals) <= {0, 2, 4} and "eval_loss" in lines[-1]
    rows = doc_table()
    assert step_keys == expected(rows, "step"), (step_keys ^ expected(rows, "step"))
    assert eval_keys == expected(rows, "eval"), (eval_keys ^ expected(rows, "eval"))
    # What the table says about the values of this run (CPU, sftgo objective, lambda 0.9).
    for j in lines:
        if "eval_loss" in j:
            assert j["eval_tokens"] > 0 and j["eval_s"] >= 0
            continue
        assert j["worst_group"] in (0, 1)
        assert j["trained_tokens"] == j["count_imp"] + j["count_unimp"] and j["tokens"] > j["trained_tokens"]
        means = {1: j["loss_imp"], 0: j["loss_unimp"]}
        assert means[j["worst_group"]] >= means[1 - j["worst_group"]]
        # loss = (1 - lambda) L_CE + lambda max(L_imp, L_unimp); the logged values are rounded doubles (1e-9).
        assert j["loss"] == pytest.approx((1 - j["lambda"]) * j["loss_ce"] + j["lambda"] * means[j["worst_group"]],
                                          rel=1e-9, abs=1e-9)
        ce = (j["count_imp"] * j["loss_imp"] + j["count_unimp"] * j["loss_unimp"]) / j["trained_tokens"]
        assert j["loss_ce"] == pytest.approx(ce, rel=1e-9)
        assert j["tokens_per_s"] == pytest.approx(j["tokens"] / j["step_s"], rel=1e-6)
        assert j["skipped"] is False
    # objective ce: worst_group -1, as the table says.
    p = subprocess.run([str(BIN), "--config", "configs/demo_tiny.yaml", "--set", "train.max_steps=1", "--set",
                        "loss.objective=ce", "--set", f"run.output_dir={tmp_path / 'ce'}", "--set",
                        f"data.cache_dir={tmp_path / 'cache'}"], cwd=sb, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads((tmp_path / "ce/metrics.jsonl").read_text())["worst_group"] == -1


@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")
def test_several_ranks_write_the_several_ranks_fields(tmp_path):
    rows = doc_table()
    multi = {f for f, (_, when) in rows.items() if when == "several ranks"}
    assert multi == {"comm_s"}
    run = tmp_path / "run"
    cmd = mpirun_cmd(2) + [str(BIN), "--config", "configs/demo_tiny.yaml", "--set", "train.max_steps=1", "--set",
                           f"run.output_dir={run}", "--set", "data.cache_dir=", "--set", "model.device=cpu",
                           "--set", "train.num_threads=1", "--set", "dist.timeout_s=60"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    _, step_keys, _ = written_keys(run / "metrics.jsonl")
    assert step_keys == expected(rows, "step") | multi
