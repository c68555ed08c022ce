"""scripts/reproduce.sh end to end on CPU: the demo config x 2 seeds, 2 training steps each, every
final checkpoint evaluated on a tiny ARC file, and the table checked against the per-run results."""
import csv
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")

ARC = [
    {"question": "Which gas do plants take in?", "answerKey": "B",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}},
    {"question": "What melts ice?", "answerKey": "A", "choices": {"text": ["heat", "cold"], "label": ["A", "B"]}},
    {"question": "Where is the sun?", "answerKey": "A", "choices": {"text": ["sky", "sea"], "label": ["A", "B"]}},
]


def test_reproduce_two_seeds_table(tmp_path):
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ARC))
    out = tmp_path / "results"
    sets = ["tokenizer.path=data/demo/tokenizer", "model.vocab_size=1408", "model.hidden_size=32",
            "model.intermediate_size=64", "model.num_layers=2", "train.max_steps=2", "data.cache_dir=",
            "model.device=cpu", "train.num_threads=2"]
    cmd = ["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml", "--seeds", "3 4",
           "--task", f"arc_challenge={data}", "--task", f"arc_easy/acc={data}", "--device", "cpu", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "SFTGO_BUILD_DIR": str(BUILD)}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]

    vals = {}
    for seed in (3, 4):
        run = out / "runs" / f"demo_tiny_seed{seed}"
        assert (run / "DONE").exists()
        assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
        for task, metric in (("arc_challenge", "acc_norm"), ("arc_easy", "acc")):
            r = json.loads((out / "evals" / f"demo_tiny_seed{seed}" / f"{task}_0shot.json").read_text())
            assert r["docs"] == 3
            vals.setdefault(task, []).append(100 * r["metrics"][metric]["value"])
    rows = list(csv.DictReader((out / "table.csv").open()))
    assert [(r["task"], r["metric"], r["seeds"]) for r in rows] == [("arc_challenge", "acc_norm", "2"),
                                                                   ("arc_easy", "acc", "2")]
    for r in rows:
        v = vals[r["task"]]
        mean = sum(v) / 2
        std = math.sqrt(sum((x - mean) ** 2 for x in v))  # n - 1 = 1
        assert float(r["mean"]) == pytest.approx(mean, abs=1e-4)
        assert float(r["std"]) == pytest.approx(std, abs=1e-4)
    md = (out / "table.md").read_text().splitlines()
    assert md[0] == "| config | arc_challenge (0-shot) | arc_easy (0-shot) | average |"
    assert md[2].startswith("| demo_tiny | ")

    # A second call reuses the finished runs and evaluations (no training step logged again).
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "[reproduce] train" not in p.stderr, p.stderr[-2000:]


def test_reproduce_rejects_bad_task_spec(tmp_path):
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml",
                        "--task", "arc_challenge"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "NAME[:SHOTS][/METRIC]=FILE" in p.stderr, p.stderr
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml",
                        "--task", f"arc_challenge={tmp_path}/missing.jsonl"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "file not found" in p.stderr, p.stderr
