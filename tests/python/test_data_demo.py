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
