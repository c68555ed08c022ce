"""Keeps the libFuzzer targets building and running: each scripts/fuzz_<target>.sh builds its target
(clang, libFuzzer + ASan + UBSan; rebuilt only when a source changed) and runs it for a few thousand
inputs from its seed corpus and their mutations. Any crash, sanitizer report or broken invariant
fails the test. The long runs (>= 1M executions each) are recorded in docs/benchmarks.md#fuzzing.
Skips, saying why, where clang or its libFuzzer runtime (libclang-rt-14-dev) is missing."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ["safetensors", "tokenizer", "config", "jsonl", "lora_adapter"]


def libfuzzer_missing():
    if shutil.which("clang++") is None:
        return "clang++ not found (apt-get install -y clang libclang-rt-14-dev)"
    probe = subprocess.run(["clang++", "-x", "c++", "-fsanitize=fuzzer", "-", "-o", os.devnull],
                           input='extern "C" int LLVMFuzzerTestOneInput(const unsigned char*, unsigned long) '
                                 '{ return 0; }\n', capture_output=True, text=True)
    if probe.returncode != 0:
        return "clang++ cannot link -fsanitize=fuzzer (apt-get install -y libclang-rt-14-dev): " + probe.stderr[-300:]
    return None


@pytest.mark.parametrize("target", TARGETS)
def test_fuzz_target_builds_and_runs(tmp_path, target):
    why = libfuzzer_missing()
    if why:
        print(f"skipping fuzz smoke: {why}")
        pytest.skip(why)
    env = dict(os.environ, SFTGO_FUZZ_CORPUS=str(tmp_path / "corpus"))
    p = subprocess.run(["bash", str(ROOT / "scripts" / f"fuzz_{target}.sh"), "60", "-runs=2000", "-seed=1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    tail = (p.stdout + p.stderr)[-4000:]
    assert p.returncode == 0, f"fuzz_{target} failed (exit {p.returncode}):\n{tail}"
    assert "Done 2000 runs" in p.stderr or "DONE" in p.stderr, tail
