"""Data formats through the sftgo-train binary: every accepted shape loads, `data --convert` writes
messages JSONL that trains into the same tokens, malformed ShareGPT records and out-of-range JSON
numbers (issue 17) are named by file:line with exit 1 and obey on_bad_record, and every example and
command in docs/data.md runs (so the page cannot drift). Also runs scripts/demo.sh for two steps."""
import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
FIX = ROOT / "tests" / "data" / "fixtures"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
DOC = ROOT / "docs" / "data.md"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")

# fixture, format auto detects, records
FORMATS = [
    ("lima.jsonl", "lima", 2),
    ("alpaca.json", "alpaca", 2),
    ("alpaca.jsonl", "alpaca", 2),
    ("chat.jsonl", "chat", 2),
    ("sharegpt.jsonl", "sharegpt", 3),
    ("sharegpt_role_content.json", "sharegpt", 2),
]


def run(*args, check=True, cwd=ROOT, **kw):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=cwd, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def data_args(path, *sets, fmt="auto"):
    """`data` on the demo config (whose format is chat) with another file, format and sets."""
    return ["data", "--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
            "--set", f"data.path={path}", "--set", f"data.format={fmt}", "--set", "data.cache_dir=", *sets]


def examples(stdout):
    """The token dump of `data --dump`, without the lines that name the source file:line."""
    part = stdout[stdout.index("first "):]
    return [l for l in part.splitlines() if not l.startswith("--- example")]


def count(stdout, label):
    return int(re.search(rf"^  {re.escape(label)}\s+(\d+)$", stdout, re.M).group(1))


@pytest.mark.parametrize("name,fmt,n", FORMATS)
def test_each_format_converts_to_messages_that_give_the_same_tokens(tmp_path, name, fmt, n):
    """Through the binary with the llama3 template and a system prompt (tests/data/test_reader.cpp
    checks the plain template too, in process)."""
    sets = ["--set", "data.system_prompt=Be kind."]
    orig = run(*data_args(FIX / name, *sets), "--dump", "10")
    assert f"(format {fmt}, template llama3," in orig.stdout
    assert count(orig.stdout, "records:") == n and count(orig.stdout, "examples:") == n
    out = tmp_path / "messages.jsonl"
    conv = run(*data_args(FIX / name), "--convert", out)
    assert f"converted {n} records of {FIX / name} (format {fmt}) to {out}" in conv.stderr, conv.stderr
    records = [json.loads(l) for l in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == n
    for r in records:
        assert list(r) == ["messages"]
        assert all(list(m) == ["role", "content"] and m["role"] in ("system", "user", "assistant")
                   for m in r["messages"])
        assert r["messages"][-1]["role"] == "assistant"
    again = run(*data_args(out, *sets, fmt="chat"), "--dump", "10")
    assert examples(again.stdout) == examples(orig.stdout)
    for label in ("tokens:", "trained tokens:"):
        assert count(again.stdout, label) == count(orig.stdout, label)
    # The named format reads the file as auto did.
    assert count(run(*data_args(FIX / name, fmt=fmt)).stdout, "examples:") == n
    assert [p.name for p in tmp_path.iterdir()] == ["messages.jsonl"]  # no temporary file left


def test_convert_to_stdout_writes_the_same_lines(tmp_path):
    out = tmp_path / "m.jsonl"
    run(*data_args(FIX / "sharegpt.jsonl"), "--convert", out)
    p = run(*data_args(FIX / "sharegpt.jsonl"), "--convert", "-")
    assert p.stdout == out.read_text(encoding="utf-8") and "to stdout" in p.stderr


def test_alpaca_input_under_the_alpaca_template_is_warned_about(tmp_path):
    conv = run(*data_args(FIX / "alpaca.json", "--set", "data.template=alpaca"), "--convert", tmp_path / "a.jsonl")
    assert "warning: 1 records have an Alpaca 'input'" in conv.stderr
    first = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert first["messages"][0] == {"role": "user", "content": "Add the two numbers.\n\n17 and 25"}


def test_malformed_sharegpt_records_are_named_by_file_line():
    bad = FIX / "sharegpt_bad.jsonl"
    p = run(*data_args(bad), check=False)
    assert p.returncode == 1, p.stderr
    assert f"{bad}:2: conversations[1].from is 'tool'; expected human, user, gpt" in p.stderr, p.stderr
    p = run(*data_args(bad, "--set", "data.on_bad_record=skip", fmt="sharegpt"))
    assert count(p.stdout, "bad records skipped:") == 2 and count(p.stdout, "examples:") == 2
    assert f"{bad}:3: conversations[1] has no 'value' (or 'content') key" in p.stderr, p.stderr


def test_convert_obeys_on_bad_record_and_never_leaves_a_partial_file(tmp_path):
    bad = FIX / "sharegpt_bad.jsonl"
    out = tmp_path / "out.jsonl"
    p = run(*data_args(bad), "--convert", out, check=False)
    assert p.returncode == 1 and f"{bad}:2" in p.stderr, p.stderr
    assert list(tmp_path.iterdir()) == []  # the first good record was written to a temporary file, now gone
    p = run(*data_args(bad, "--set", "data.on_bad_record=skip"), "--convert", out)
    assert "converted 2 records" in p.stderr and "skipped 2 bad records" in p.stderr, p.stderr
    assert len(out.read_text().splitlines()) == 2


def test_convert_refuses_its_input_a_missing_directory_and_dump(tmp_path):
    src = tmp_path / "chat.jsonl"
    src.write_bytes((FIX / "chat.jsonl").read_bytes())
    p = run(*data_args(src), "--convert", src, check=False)
    assert p.returncode == 2 and "is the input data file" in p.stderr, p.stderr
    assert src.read_bytes() == (FIX / "chat.jsonl").read_bytes()
    p = run(*data_args(src), "--convert", tmp_path / "no" / "such" / "dir.jsonl", check=False)
    assert p.returncode == 1 and str(tmp_path / "no" / "such" / "dir.jsonl") in p.stderr, p.stderr
    assert run(*data_args(src), "--convert", "-", "--dump", "1", check=False).returncode == 2


# issue 17: {"n": 1e999999} in a record ended in "internal error" (exit 3) with no file:line, and
# on_bad_record: skip did not skip it.
@pytest.mark.parametrize("suffix", ["jsonl", "json"])
def test_number_overflow_is_a_bad_record_named_by_line(tmp_path, suffix):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = json.dumps(good)[:-1] + ', "n": 1e999999}'
    path = tmp_path / f"overflow.{suffix}"
    lines = [json.dumps(good), bad, json.dumps(good)]
    path.write_text("\n".join(lines) + "\n" if suffix == "jsonl" else "[\n" + ",\n".join(lines) + "\n]\n")
    line = 2 if suffix == "jsonl" else 3
    p = run(*data_args(path), check=False)
    assert p.returncode == 1, p.stderr
    assert f"{path}:{line}: number out of range" in p.stderr and "internal error" not in p.stderr, p.stderr
    p = run(*data_args(path, "--set", "data.on_bad_record=skip"))
    assert count(p.stdout, "bad records skipped:") == 1 and count(p.stdout, "examples:") == 2
    # Training reads data through the same reader: exit 1 naming the line, not exit 3.
    p = run("--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
            "--set", "model.vocab_size=1408", "--set", f"data.path={path}", "--set", "data.cache_dir=",
            "--set", f"run.output_dir={tmp_path / 'run'}", "--set", "train.max_steps=1", check=False)
    assert p.returncode == 1 and f"{path}:{line}" in p.stderr, p.stderr


def doc_blocks(lang):
    """Fenced blocks of docs/data.md in `lang` (also indented ones inside list items)."""
    return [re.sub(r"(?m)^ {2}", "", m.group(2)) for m in
            re.finditer(rf"(?ms)^( *)```{lang}\n(.*?)^\1```", DOC.read_text(encoding="utf-8"))]


def test_doc_examples_are_accepted_as_the_format_they_illustrate(tmp_path):
    expected = ["chat", "sharegpt", "sharegpt", "sharegpt", "lima", "alpaca"]
    blocks = doc_blocks("json")
    assert len(blocks) == len(expected)
    for i, (block, fmt) in enumerate(zip(blocks, expected)):
        path = tmp_path / (f"ex{i}.json" if block.lstrip().startswith("[") else f"ex{i}.jsonl")
        path.write_text(block)
        p = run(*data_args(path), "--convert", "-")
        assert f"(format {fmt})" in p.stderr, (block, p.stderr)


def test_doc_commands_run(tmp_path):
    """Runs every `build/bin/sftgo-train ...` line of the doc's sh blocks, in order, from a directory
    that looks like the repository root (outputs land in tmp_path)."""
    for d in ("configs", "data", "tests"):
        (tmp_path / d).symlink_to(ROOT / d)
    commands = [l for b in doc_blocks("sh") for l in b.splitlines() if l.startswith("build/bin/sftgo-train ")]
    assert len(commands) == 4
    for cmd in commands:
        argv = shlex.split(cmd)
        p = run(*argv[1:], cwd=tmp_path)
        if "--dump" in argv:
            assert "first 2 examples" in p.stdout, p.stdout
    assert len((tmp_path / "sharegpt_messages.jsonl").read_text().splitlines()) == 3


def test_demo_script_prints_phase_timings(tmp_path):
    """scripts/demo.sh as README tells users to run it (two training steps here); its build step is a
    no-op when sftgo-train is up to date."""
    env = dict(os.environ, SFTGO_BUILD_DIR=str(BUILD))
    p = subprocess.run(["scripts/demo.sh", "--set", f"run.output_dir={tmp_path / 'run'}", "--set",
                        f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.max_steps=2"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr[-4000:]
    for phase in ("packages", "python", "configure", "compile", "data", "training", "total"):
        assert re.search(rf"^  {phase} +\d+\.\d s$", p.stderr, re.M), p.stderr[-2000:]
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "run" / "group_losses.svg").exists()
