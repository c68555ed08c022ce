"""Every command in docs/reproduce.md and docs/evaluation.md, run as written (in a sandbox laid out like
the repository) with tiny stand-ins, so the guides cannot drift from the code.

Stand-ins: the Llama models -> a tiny random preset (`--set` overrides appended to every
config-based `sftgo-train` command), LIMA -> a few conversations, the LLMLingua-2 hub model -> the
tiny classifier of scripts/make_tiny_llmlingua2.py (its hub id replaced by that directory), the hub
datasets of `load_dataset` -> tiny local rows (a sitecustomize patches datasets.load_dataset),
`lm_eval` in reproduce.sh -> the result-writing stand-in of test_eval_reproduce.py, and five seeds ->
one. Commands that only download (`hf download`, `curl`) or need lm_eval's hub datasets
(`lm_eval ...`) are not run: every flag they use is checked against the installed tool's --help.
A command of any other kind fails the test, so a new command in the docs needs a rule here.
"""
import importlib.util
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
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
_spec = importlib.util.spec_from_file_location("ter", ROOT / "tests/python/test_eval_reproduce.py")
ter = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ter)
PY = ter.PY


def doc_commands(path: Path):
    """Commands of the ```sh blocks: continuation lines joined, comments dropped."""
    cmds, block = [], None
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```sh" and block is None else None
            continue
        if block is None:
            continue
        s = line.rstrip()
        if cmds and cmds[-1].endswith("\\"):
            cmds[-1] = cmds[-1][:-1].rstrip() + " " + s.strip()
            continue
        s = re.sub(r"\s+#.*$", "", s) if not s.lstrip().startswith("#") else ""
        if s.strip():
            cmds.append(s.strip())
    return cmds


# The hub datasets of docs/evaluation.md -> the tiny rows of test_eval_reproduce.write_eval_files.
HUB = {("cais/mmlu", "all", "test"): "mmlu", ("cais/mmlu", "all", "dev"): "mmlu_dev",
       ("regisss/math_qa", None, "test"): "mathqa", ("allenai/ai2_arc", "ARC-Challenge", "test"): "arc_challenge",
       ("allenai/openbookqa", "main", "test"): "openbookqa", ("Rowan/hellaswag", None, "validation"): "hellaswag",
       ("truthfulqa/truthful_qa", "multiple_choice", "validation"): "truthfulqa_mc"}
SITECUSTOMIZE = r'''
import json, os
import datasets
_rows = json.loads(open(os.environ["SFTGO_DOCS_HUB"]).read())
def load_dataset(path, name=None, split=None, **kw):
    key = "|".join([path, str(name), str(split)])
    if key not in _rows:
        raise SystemExit(f"docs stand-in: no local rows for load_dataset{(path, name, split)}")
    return datasets.Dataset.from_list(_rows[key])
datasets.load_dataset = load_dataset
'''


def help_flags(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True)
    return out.stdout + out.stderr


def check_flags(words, help_text, what):
    for w in words:
        if w.startswith("-"):
            flag = w.split("=", 1)[0]
            assert re.search(rf"(^|[\s,]){re.escape(flag)}([\s,=]|$)", help_text, re.M), f"{what}: {flag} not in --help"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    sb = tmp_path_factory.mktemp("docs")
    for name in ("scripts", "configs"):
        (sb / name).symlink_to(ROOT / name)
    (sb / "build").symlink_to(BUILD)
    if (ROOT / ".venv").exists():
        (sb / ".venv").symlink_to(ROOT / ".venv")
    (sb / "data").mkdir()
    (sb / "data/demo").symlink_to(ROOT / "data/demo")
    (sb / "data/eval").mkdir()
    (sb / "data/eval/samples").symlink_to(ROOT / "data/eval/samples")
    # evaluation.md's offline commands score the demo's model (what scripts/demo.sh leaves): a tiny one.
    subprocess.run([str(BIN), "--config", "configs/demo_tiny.yaml", *sum((["--set", s] for s in ter.TINY_SETS), []),
                    "--set", "run.output_dir=runs/demo_tiny"], cwd=sb, check=True, capture_output=True)
    assert (sb / "runs/demo_tiny/checkpoints/latest/tokenizer.json").exists()
    (sb / "data/lima").mkdir()
    convs = []
    for line in (ROOT / "data/demo/demo_sft.jsonl").read_text().splitlines()[:40]:
        turns = [m["content"] for m in json.loads(line)["messages"] if m["role"] in ("user", "assistant")]
        convs.append({"conversations": turns[: len(turns) // 2 * 2]})  # user, assistant, ... pairs
    (sb / "data/lima/train.jsonl").write_text("".join(json.dumps(c) + "\n" for c in convs))
    # The tiny LLMLingua-2 classifier that stands in for the hub model.
    subprocess.run([PY, "scripts/make_tiny_llmlingua2.py", str(sb / "hub/tiny-xlm-roberta-large")], cwd=ROOT,
                   check=True, capture_output=True)
    # Local rows for load_dataset, and the lm_eval stand-in.
    evals = sb / "hub/eval"
    ter.write_eval_files(evals)
    rows = {"|".join([p, str(n), str(s)]): [json.loads(l) for l in (evals / f"{f}.jsonl").read_text().splitlines()]
            for (p, n, s), f in HUB.items()}
    (sb / "hub/rows.json").write_text(json.dumps(rows))
    (sb / "hub/site").mkdir()
    (sb / "hub/site/sitecustomize.py").write_text(SITECUSTOMIZE)
    fake = sb / "hub/lm_eval"
    fake.write_text(f"#!{PY}\n" + ter.FAKE_LM_EVAL)
    fake.chmod(0o755)
    return sb


def run_in(sb, args, env=None, ok=True):
    p = subprocess.run(args, cwd=sb, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if ok:
        assert p.returncode == 0, f"{' '.join(map(str, args))[:400]}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


# The tiny model, but the configs' own data (data/lima/train.jsonl here holds a few LIMA-format lines).
SETS = [s for s in ter.TINY_SETS if not s.startswith(("data.path=", "data.format="))]


def tiny_sets(sb):
    return sum((["--set", s] for s in SETS), [])


def test_every_documented_command_runs(sandbox):
    sb = sandbox
    env_vars = {}
    ran = []
    offline = set()  # tasks the offline section evaluated on data/eval/samples
    lm_eval_help = help_flags([str(ROOT / ".venv/bin/lm_eval"), "run", "--help"]) if (ROOT / ".venv/bin/lm_eval").exists() else None
    hf_help = help_flags([str(ROOT / ".venv/bin/hf"), "download", "--help"]) if (ROOT / ".venv/bin/hf").exists() else None
    curl_help = help_flags(["curl", "--help", "all"])
    # evaluation.md's data preparation first (it makes the data/eval files reproduce.md's tables read),
    # then reproduce.md (which trains the runs), then evaluation.md's commands on a checkpoint.
    ev = doc_commands(ROOT / "docs/evaluation.md")
    cut = next(i for i, c in enumerate(ev) if c.startswith("CKPT="))
    commands = ev[:cut] + doc_commands(ROOT / "docs/reproduce.md") + ev[cut:]
    assert len(commands) >= 20
    for cmd in commands:
        for k, v in env_vars.items():
            cmd = cmd.replace(f"${k}", v)
        words = shlex.split(cmd)
        prog = words[0]
        if re.fullmatch(r"[A-Z_]+=\S+", cmd):  # CKPT=<a finished checkpoint directory>
            k = cmd.split("=", 1)[0]
            ckpts = sorted((sb / "runs/lima_llama3b_tfidf/checkpoints").glob("step_*"))
            assert cmd.split("=", 1)[1].startswith("runs/lima_llama3b_tfidf/checkpoints/step_") and ckpts
            env_vars[k] = str(ckpts[-1].relative_to(sb))
        elif prog == "mkdir":
            run_in(sb, words)
        elif prog == ".venv/bin/hf":
            if hf_help is None:
                pytest.skip("hf (huggingface_hub CLI) not installed")
            assert words[1] == "download"
            check_flags(words[2:], hf_help, cmd)
        elif prog == "curl":
            check_flags(words[1:], curl_help, cmd)
        elif prog == ".venv/bin/lm_eval":
            if lm_eval_help is None:
                pytest.skip("lm_eval not installed")
            check_flags(words[1:], lm_eval_help, cmd)
            assert "--model" in words and "hf" in words
        elif prog == ".venv/bin/python" and words[1] == "-c":
            run_in(sb, words, env={"PYTHONPATH": str(sb / "hub/site"), "SFTGO_DOCS_HUB": str(sb / "hub/rows.json")})
            out = re.search(r"to_json\('([^']+)'\)", words[2]).group(1)
            name = Path(out).stem
            want = [json.loads(l) for l in (sb / "hub/eval" / f"{name}.jsonl").read_text().splitlines()]
            assert [json.loads(l) for l in (sb / out).read_text().splitlines()] == want
        elif prog == ".venv/bin/python" and words[1] == "scripts/export_llmlingua2.py":
            assert words[2] == "microsoft/llmlingua-2-xlm-roberta-large-meetingbank"
            run_in(sb, [PY, words[1], str(sb / "hub/tiny-xlm-roberta-large"), *words[3:]])
            assert (sb / words[3] / "model.pt").exists()
        elif prog == ".venv/bin/python" and words[1] in ("scripts/plot_runs.py", "scripts/reproduce_tables.py"):
            if "--seeds" in words:
                words[words.index("--seeds") + 1] = "1"
            run_in(sb, [PY, *words[1:]])
        elif prog == "build/bin/sftgo-train":
            sub = words[1] if not words[1].startswith("-") else "train"
            extra = tiny_sets(sb) if sub in ("train", "data", "groups") else []
            p = run_in(sb, words + extra)
            data = words[words.index("--data") + 1] if "--data" in words else ""
            if sub == "eval" and data.startswith("data/eval/samples/"):
                task = words[words.index("--task") + 1]
                n = len((ROOT / data).read_text().splitlines())
                assert re.search(rf"^\| {task} \| \d+ \| {n} \| acc", p.stdout, re.M), (cmd, p.stdout)
                offline.add(task)
            if sub == "train" and "configs/lima_llama3b_sft.yaml" in words:
                # The page's second plot compares with the TF-IDF row: train it the same way.
                run_in(sb, [words[0], "--config", "configs/lima_llama3b_tfidf.yaml"] + extra)
        elif prog == "scripts/reproduce.sh":
            words[words.index("--seeds") + 1] = "1"
            words += ["--no-setup", "--datasets", "lima", "--models", "3b", "--lm-eval", str(sb / "hub/lm_eval"),
                      "--device", "cpu"] + tiny_sets(sb)
            run_in(sb, ["bash", *words], env={"SFTGO_BUILD_DIR": str(BUILD)})
        else:
            pytest.fail(f"docs command with no rule in this test: {cmd}")
        ran.append(cmd)
    # What the commands should have left behind.
    assert (sb / "models/llmlingua2/model.pt").exists()
    assert (sb / "groups.html").exists() and (sb / "groups.jsonl").exists()
    assert (sb / "runs/lima_llama3b_sft/group_losses.svg").exists() and (sb / "sft_vs_tfidf.svg").exists()
    assert (sb / "sft_vs_tfidf.png").exists()
    tables = (sb / "results/tables.md").read_text()
    assert "## Table 1: LIMA" in tables and "## Table 4" in tables
    assert {p.name for p in (sb / "data/eval").iterdir()} == {f"{f}.jsonl" for f in HUB.values()} | {"samples"}
    # The offline commands on data/eval/samples: one per task format, every document scored.
    assert offline == {"arc_challenge", "openbookqa", "hellaswag", "mmlu", "truthfulqa_mc1", "truthfulqa_mc2",
                       "mathqa"}, offline
    res = json.loads((sb / "mathqa.json").read_text())
    assert res["docs"] == len((ROOT / "data/eval/samples/mathqa.jsonl").read_text().splitlines())
    assert len((sb / "mathqa_docs.jsonl").read_text().splitlines()) == res["docs"]
    assert len(ran) == len(commands)
