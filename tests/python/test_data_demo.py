"""The committed demo dataset is exactly what scripts/make_demo_data.py generates, and its answers are right."""
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "data" / "demo" / "demo_sft.jsonl"


def test_generator_reproduces_committed_file(tmp_path):
    out = tmp_path / "demo.jsonl"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_demo_data.py"), str(out)], check=True,
                   capture_output=True)
    assert out.read_bytes() == DEMO.read_bytes()


def test_demo_is_small_valid_chat_with_correct_arithmetic():
    assert DEMO.stat().st_size < 200_000
    lines = DEMO.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= 300
    checked = 0
    for line in lines:
        msgs = json.loads(line)["messages"]
        assert msgs[-1]["role"] == "assistant"
        assert all(m["role"] in ("system", "user", "assistant") and m["content"].strip() for m in msgs)
        for m in msgs:
            match = re.fullmatch(r"(\d+) ([-+*]) (\d+) = (\d+)\.", m["content"])
            if m["role"] == "assistant" and match:
                a, op, b, r = match.groups()
                assert eval(f"{a} {op} {b}") == int(r)  # noqa: S307 - digits and one operator only
                checked += 1
    assert checked > 100


# ---- scripts/demo.sh and configs/demo_tiny.yaml as a new user runs them (issue 24, items 1-2) ----
import os  # noqa: E402
import shlex  # noqa: E402
import shutil  # noqa: E402

import pytest  # noqa: E402

BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
needs_bin = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def demo(tmp_path, *extra):
    """scripts/demo.sh as README tells users to type it; two training steps and a private cache keep it
    short (the same script path: set-up, tokenize, data, the run-directory check, training, plot)."""
    env = dict(os.environ, SFTGO_BUILD_DIR=str(BUILD))
    args = ["scripts/demo.sh", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.max_steps=2",
            *extra]
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)


@needs_bin
def test_demo_runs_again_and_says_it_replaced_its_run(tmp_path):
    run = tmp_path / "runs" / "demo_tiny"
    first = demo(tmp_path, "--set", f"run.output_dir={run}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "replacing" not in first.stderr
    second = demo(tmp_path, "--set", f"run.output_dir={run}")
    assert second.returncode == 0, second.stderr[-3000:]
    replaced = [l for l in second.stderr.splitlines() if "replacing it" in l]
    assert len(replaced) == 1 and str(run) in replaced[0] and "--overwrite" in replaced[0], second.stderr[-3000:]
    # A fresh run, not one appended to the old: two steps in the log, one final checkpoint.
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002"]
    # Continuing instead of replacing: --resume auto is passed through, and nothing is replaced.
    third = demo(tmp_path, "--set", f"run.output_dir={run}", "--set", "train.max_steps=3", "--resume", "auto")
    assert third.returncode == 0 and "replacing" not in third.stderr, third.stderr[-3000:]
    assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]


@needs_bin
def test_demo_never_replaces_a_run_of_another_name(tmp_path):
    run = tmp_path / "mine"
    p = subprocess.run([str(BIN), "--config", "configs/demo_tiny.yaml", "--set", f"run.output_dir={run}",
                        "--set", "run.name=my_experiment", "--set", "train.max_steps=1",
                        "--set", f"data.cache_dir={tmp_path / 'cache'}"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    before = (run / "metrics.jsonl").read_bytes()
    p = demo(tmp_path, "--set", f"run.output_dir={run}")
    assert p.returncode == 1 and "already holds a run" in p.stderr and "replacing" not in p.stderr, p.stderr[-3000:]
    assert (run / "metrics.jsonl").read_bytes() == before


def header_command(config: Path):
    first = config.read_text().splitlines()[0]
    assert first.startswith("# Run: "), first
    return shlex.split(first[len("# Run: "):].split("  ")[0])


@needs_bin
def test_demo_config_header_command_runs_in_a_plain_clone(tmp_path):
    """The command in configs/demo_tiny.yaml's first line, in a copy of the repository's configs/ and data/
    with no ../shared beside it (what a user who cloned only this repository has)."""
    clone = tmp_path / "clone"
    shutil.copytree(ROOT / "configs", clone / "configs")
    shutil.copytree(ROOT / "data", clone / "data")
    assert not (tmp_path / "shared").exists()
    words = header_command(ROOT / "configs" / "demo_tiny.yaml")
    assert words[:3] == ["build/bin/sftgo-train", "--config", "configs/demo_tiny.yaml"] and len(words) == 3
    p = subprocess.run([str(BIN), *words[1:], "--set", "train.max_steps=2"], cwd=clone, capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(l) for l in (clone / "runs/demo_tiny/metrics.jsonl").read_text().splitlines()]
    assert [l["step"] for l in lines] == [1, 2]
    resolved = (clone / "runs/demo_tiny/resolved_config.yaml").read_text()
    assert re.search(r"^  path: \"?data/demo/tokenizer\"?$", resolved, re.M), resolved
    # The checkpoint carries the shipped tokenizer, so it is a complete Hugging Face directory.
    ckpt = clone / "runs/demo_tiny/checkpoints/step_00000002"
    assert (ckpt / "tokenizer.json").read_bytes() == (ROOT / "data/demo/tokenizer/tokenizer.json").read_bytes()


@needs_bin
def test_missing_tokenizer_error_points_at_the_shipped_one(tmp_path):
    p = subprocess.run([str(BIN), "data", "--config", "configs/demo_tiny.yaml", "--set",
                        f"tokenizer.path={tmp_path / 'llama3'}", "--set", f"data.cache_dir={tmp_path / 'c'}"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1, p.stderr
    assert f"tokenizer file not found: {tmp_path / 'llama3'}" in p.stderr and "data/demo/tokenizer" in p.stderr, p.stderr
