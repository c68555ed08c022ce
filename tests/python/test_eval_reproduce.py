"""scripts/reproduce.sh end to end on CPU: the demo config x 2 seeds, 2 training steps each, every
final checkpoint evaluated on a tiny ARC file, and the table checked against the per-run results."""
import csv
import json
import math
import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
needs_bin = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")

ARC = [
    {"question": "Which gas do plants take in?", "answerKey": "B",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}},
    {"question": "What melts ice?", "answerKey": "A", "choices": {"text": ["heat", "cold"], "label": ["A", "B"]}},
    {"question": "Where is the sun?", "answerKey": "A", "choices": {"text": ["sky", "sea"], "label": ["A", "B"]}},
]


@needs_bin
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
        for task, metric in (("arc_challenge", "acc_norm"), ("arc_challenge", "acc"), ("arc_easy", "acc")):
            r = json.loads((out / "evals" / f"demo_tiny_seed{seed}" / f"{task}_0shot.json").read_text())
            assert r["docs"] == 3
            vals.setdefault((task, metric), []).append(100 * r["metrics"][metric]["value"])
    def check_table(arc_challenge_metric):
        rows = list(csv.DictReader((out / "table.csv").open()))
        assert [(r["task"], r["metric"], r["seeds"]) for r in rows] == [("arc_challenge", arc_challenge_metric, "2"),
                                                                       ("arc_easy", "acc", "2")]
        for r in rows:
            v = vals[(r["task"], r["metric"])]
            mean = sum(v) / 2
            std = math.sqrt(sum((x - mean) ** 2 for x in v))  # n - 1 = 1
            assert float(r["mean"]) == pytest.approx(mean, abs=1e-4)
            assert float(r["std"]) == pytest.approx(std, abs=1e-4)
        md = (out / "table.md").read_text().splitlines()
        # Every column says which metric it shows (the default is the paper's acc, as --tables uses).
        assert md[0] == f"| config | arc_challenge (0-shot, {arc_challenge_metric}) | arc_easy (0-shot, acc) | average |"
        assert md[2].startswith("| demo_tiny | ")

    check_table("acc")
    # A second call reuses the finished runs and evaluations (no training step logged again);
    # --metric acc_norm switches the columns whose spec names no metric.
    p = subprocess.run(cmd + ["--metric", "acc_norm"], cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "[reproduce] train" not in p.stderr, p.stderr[-2000:]
    check_table("acc_norm")


@needs_bin
def test_reproduce_evaluates_a_lora_run_with_its_adapter(tmp_path):
    """A LoRA run's checkpoint holds the frozen base weights plus adapter/: reproduce.sh must score the
    adapted model (eval --adapter), whose metrics equal a direct `eval --adapter` call exactly."""
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ARC))
    out = tmp_path / "results"
    sets = ["tokenizer.path=data/demo/tokenizer", "model.vocab_size=1408", "model.hidden_size=32",
            "model.intermediate_size=64", "model.num_layers=2", "train.max_steps=2", "data.cache_dir=",
            "model.device=cpu", "train.num_threads=2", "lora.enabled=true", "lora.rank=4", "optim.lr=0.05"]
    cmd = ["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml", "--seeds", "3",
           "--task", f"arc_easy={data}", "--device", "cpu", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    env = {**os.environ, "SFTGO_BUILD_DIR": str(BUILD)}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads((out / "evals" / "demo_tiny_seed3" / "arc_easy_0shot.json").read_text())
    ckpt = Path(r["model"])
    assert r.get("adapter") == str(ckpt / "adapter") and (ckpt / "adapter" / "adapter_model.safetensors").exists()
    direct = tmp_path / "direct.json"
    subprocess.run([str(BIN), "eval", "--model", str(ckpt), "--adapter", str(ckpt / "adapter"), "--task",
                    "arc_easy", "--data", str(data), "--device", "cpu", "--out", str(direct)],
                   check=True, capture_output=True, cwd=ROOT)
    assert json.loads(direct.read_text())["metrics"] == r["metrics"]


@needs_bin
def test_reproduce_rejects_bad_task_spec(tmp_path):
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml",
                        "--task", "arc_challenge"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "NAME[:SHOTS][/METRIC]=FILE" in p.stderr, p.stderr
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml",
                        "--task", f"arc_challenge={tmp_path}/missing.jsonl"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "file not found" in p.stderr, p.stderr


# ---- Tables 1-4 (`--tables`) -------------------------------------------------------------------------
import importlib.util  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

_spec = importlib.util.spec_from_file_location("reproduce_tables", ROOT / "scripts/reproduce_tables.py")
rt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(rt)
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable


def test_table_arithmetic_on_the_papers_own_numbers():
    # Appendix G: TruthfulQA = mean of six (Table 5, LIMA 3B Baseline-SFT), IFEval = mean of four (Table 6).
    assert round(rt.mean(rt.PAPER_TQA[("lima", "3b", "sft")]), 2) == 35.29
    assert round(rt.mean(rt.PAPER_IFEVAL[("lima", "3b", "sft")]), 2) == 26.53
    # Table 3 from Table 1: LIMA 3B BaseSFT SS-B / GR-B = 41.11 / 39.61 (the check).
    row = rt.PAPER_T12[("lima", "3b", "sft")]
    ss, gr = rt.ssb_grb({c: row[i][0] for i, c in enumerate(rt.COLUMNS)})
    assert (round(ss, 2), round(gr, 2)) == (41.11, 39.61)
    assert round(rt.mean([row[i][0] for i in range(8)]), 2) == 40.55  # Avg. = mean of the eight columns
    # Every composite of Tables 1-3 recomputes within rounding (0.01) except the paper's own slips,
    # which are listed one by one (e.g. LIMA 8B Baseline-SFT GR-B: (57.11 + 36.16 + 24.96) / 3 = 39.41, printed 40.32).
    assert sorted(rt.self_check()) == sorted(rt.PAPER_INCONSISTENT)
    assert len(rt.PAPER_INCONSISTENT) == 8
    p = subprocess.run([PY, "scripts/reproduce_tables.py", "--self-check"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and "72 of 80" in p.stdout, p.stdout + p.stderr


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_eval_files(d):
    """Tiny stand-ins for the eight multiple-choice files of Tables 1-2 (fields as docs/evaluation.md)."""
    d.mkdir(parents=True, exist_ok=True)
    mmlu = [{"question": f"Q{i}: what is {i} + 1?", "subject": "elementary_mathematics",
             "choices": [str(i), str(i + 1), str(i + 2), "none"], "answer": 1} for i in range(3)]
    _jsonl(d / "mmlu.jsonl", mmlu)
    _jsonl(d / "mmlu_dev.jsonl", [{**r, "question": f"Dev {r['question']}"} for r in mmlu] + mmlu[:2])
    _jsonl(d / "mathqa.jsonl", [{"Problem": "what is 5 + 7 ?", "correct": "b",
                                 "options": "a ) 10 , b ) 12 , c ) 14 , d ) 11 , e ) 13"},
                                {"Problem": "a train runs 60 km in 1 hour . speed ?", "correct": "a",
                                 "options": "a ) 60 , b ) 30 , c ) 90 , d ) 45 , e ) 120"}])
    _jsonl(d / "arc_challenge.jsonl", ARC)
    _jsonl(d / "openbookqa.jsonl", [{"question_stem": "Water freezes at", "answerKey": "A",
                                     "choices": {"text": ["zero degrees", "fifty degrees"], "label": ["A", "B"]}},
                                    {"question_stem": "The sun is", "answerKey": "B",
                                     "choices": {"text": ["cold", "hot"], "label": ["A", "B"]}}])
    _jsonl(d / "hellaswag.jsonl", [{"activity_label": "Baking", "ctx_a": "A woman mixes flour.", "ctx_b": "she",
                                    "endings": ["bakes the dough.", "swims.", "sings.", "drives away."], "label": "0"},
                                   {"activity_label": "Cars", "ctx_a": "A man washes a car.", "ctx_b": "he",
                                    "endings": ["flies.", "dries it.", "eats it.", "sleeps."], "label": "1"}])
    _jsonl(d / "truthfulqa_mc.jsonl", [
        {"question": "What is the capital of France?",
         "mc1_targets": {"choices": ["Paris", "London", "Rome"], "labels": [1, 0, 0]},
         "mc2_targets": {"choices": ["Paris", "It is Paris", "London"], "labels": [1, 1, 0]}},
        {"question": "Can pigs fly?", "mc1_targets": {"choices": ["No", "Yes"], "labels": [1, 0]},
         "mc2_targets": {"choices": ["No", "Pigs cannot fly", "Yes"], "labels": [1, 1, 0]}}])


# A stand-in for the `lm_eval` command line: checks that it is pointed at a loadable Hugging Face
# checkpoint and writes a result JSON in lm_eval 0.4's layout (OUTPUT_PATH/<model>/results_<time>.json,
# metrics named "<metric>,none") with values derived from the checkpoint's weights file, so that two
# seeds differ. Running the real lm_eval generation tasks needs their hub datasets and minutes per
# checkpoint; the parsing of its real output format is what this pins.
FAKE_LM_EVAL = r'''
import argparse, hashlib, json, pathlib, sys
ap = argparse.ArgumentParser()
ap.add_argument("--model"); ap.add_argument("--model_args"); ap.add_argument("--tasks")
ap.add_argument("--batch_size"); ap.add_argument("--output_path"); ap.add_argument("--limit")
ap.add_argument("--apply_chat_template", action="store_true")
a = ap.parse_args()
assert a.model == "hf", a.model
args = dict(kv.split("=", 1) for kv in a.model_args.split(","))
ckpt = pathlib.Path(args["pretrained"])
weights = ckpt / "model.safetensors"
if not (ckpt / "config.json").exists() or not weights.exists():
    sys.exit(f"fake lm_eval: {ckpt} is not a Hugging Face checkpoint")
h = hashlib.sha256(weights.read_bytes() + a.tasks.encode()).digest()
names = {"ifeval": ["inst_level_loose_acc", "inst_level_strict_acc", "prompt_level_loose_acc", "prompt_level_strict_acc"],
         "truthfulqa_gen": ["bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc", "bleu_max", "rouge1_max"]}[a.tasks]
res = {f"{n},none": h[i] / 255 for i, n in enumerate(names)}
res.update({f"{n}_stderr,none": 0.01 for n in names}); res["alias"] = a.tasks
out = pathlib.Path(a.output_path) / str(ckpt).replace("/", "__")
out.mkdir(parents=True, exist_ok=True)
(out / "results_2026-01-01T00-00-00.000000.json").write_text(json.dumps(
    {"results": {a.tasks: res}, "config": {"model_args": a.model_args, "chat": a.apply_chat_template}}))
'''

TINY_SETS = ["model.path=", "model.preset=tiny", "tokenizer.path=data/demo/tokenizer", "model.vocab_size=1408",
             "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.dtype=float32",
             "model.device=cpu", "model.activation_checkpointing=false", "train.precision=fp32", "train.max_steps=2",
             "train.global_batch_size=4", "train.micro_batch_size=2", "train.save_every=0", "train.num_threads=2",
             "data.path=data/demo/demo_sft.jsonl", "data.format=chat", "data.max_seq_len=128", "data.cache_dir=",
             "grouping.llmlingua2_device=cpu", "dist.zero1=false"]


@pytest.fixture(scope="module")
def llmlingua2_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("llm2")
    hf, exp = base / "tiny-xlm-roberta-large", base / "export"
    subprocess.run([PY, "scripts/make_tiny_llmlingua2.py", str(hf)], cwd=ROOT, check=True, capture_output=True)
    subprocess.run([PY, "scripts/export_llmlingua2.py", str(hf), str(exp)], cwd=ROOT, check=True, capture_output=True)
    return exp


def _stats(xs):
    m = sum(xs) / len(xs)
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


@needs_bin
def test_reproduce_tables_1_to_4_end_to_end(tmp_path, llmlingua2_export):
    evals = tmp_path / "eval"
    write_eval_files(evals)
    fake = tmp_path / "lm_eval"
    fake.write_text(f"#!{PY}\n" + FAKE_LM_EVAL)
    fake.chmod(0o755)
    out = tmp_path / "results"
    cmd = ["bash", "scripts/reproduce.sh", "--no-setup", "--tables", "--datasets", "lima", "--models", "3b",
           "--seeds", "1 2", "--eval-dir", str(evals), "--lm-eval", str(fake), "--device", "cpu", "--out", str(out)]
    for s in TINY_SETS + [f"grouping.llmlingua2_model={llmlingua2_export}"]:
        cmd += ["--set", s]
    env = {**os.environ, "SFTGO_BUILD_DIR": str(BUILD)}
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr[-4000:]
    runs = ["lima_llama3b_sft", "lima_llama3b_rho1", "lima_llama3b_tfidf", "lima_llama3b_llmlingua2",
            "lima_llama3b_llmlingua2_static"]
    assert sorted(x.name for x in (out / "runs").iterdir()) == sorted(f"{r}_seed{s}" for r in runs for s in (1, 2))
    # The Rho-1 rows used the same seed's plain-SFT model as reference.
    rcfg = (out / "runs/lima_llama3b_rho1_seed2/resolved_config.yaml").read_text()
    assert "lima_llama3b_sft_seed2/checkpoints/step_" in rcfg

    # Independent recomputation of every Table 1 cell from the per-run result files.
    def pct(run, task, shots, metric="acc"):
        return 100 * json.loads((out / "evals" / run / f"{task}_{shots}shot.json").read_text())["metrics"][metric]["value"]

    def lm(run, task, names):
        f = next((out / "lm_eval" / run / task).rglob("results*.json"))
        r = json.loads(f.read_text())
        assert r["config"]["chat"] is True  # LIMA rows go through the chat template
        return [100 * r["results"][task][f"{n},none"] for n in names]

    def columns(run):
        c = [pct(run, "mmlu", 0), pct(run, "mmlu", 5), pct(run, "mathqa", 0), pct(run, "arc_challenge", 0),
             pct(run, "openbookqa", 0), pct(run, "hellaswag", 0)]
        tqa = lm(run, "truthfulqa_gen", ["bleu_acc", "rouge1_acc", "rouge2_acc", "rougeL_acc"])
        tqa += [pct(run, "truthfulqa_mc1", 0), pct(run, "truthfulqa_mc2", 0)]
        ife = lm(run, "ifeval", ["inst_level_loose_acc", "inst_level_strict_acc", "prompt_level_loose_acc",
                                 "prompt_level_strict_acc"])
        c += [sum(tqa) / 6, sum(ife) / 4]
        return c + [sum(c) / 8]

    names = ["MMLU:0", "MMLU:5", "MathQA", "ARC-C", "OpenBookQA", "HellaSwag", "TruthfulQA", "IFEval", "Avg."]
    labels = {"sft": "Baseline-SFT", "rho1": "Rho-1", "tfidf": "TF-IDF", "llmlingua2": "LLMLingua-2"}
    t1 = {(r["method"], r["column"]): r for r in csv.DictReader((out / "table1.csv").open())}
    means = {}
    for meth, label in labels.items():
        per_seed = [columns(f"lima_llama3b_{meth}_seed{s}") for s in (1, 2)]
        for i, col in enumerate(names):
            m, sd = _stats([ps[i] for ps in per_seed])
            means[(meth, col)] = m
            row = t1[(label, col)]
            assert float(row["mean"]) == pytest.approx(m, abs=1e-3) and float(row["std"]) == pytest.approx(sd, abs=1e-3)
            paper = rt.PAPER_T12[("lima", "3b", meth)][i][0]
            assert float(row["paper"]) == paper and float(row["diff"]) == pytest.approx(m - paper, abs=1e-3)
    # Table 3: SS-B / GR-B and the difference to Baseline-SFT.
    t3 = {r["method"]: r for r in csv.DictReader((out / "table3.csv").open())}
    for meth, label in labels.items():
        ss = sum(means[(meth, c)] for c in names[:5]) / 5
        gr = sum(means[(meth, c)] for c in names[5:8]) / 3
        bss = sum(means[("sft", c)] for c in names[:5]) / 5
        assert float(t3[label]["SS-B"]) == pytest.approx(ss, abs=1e-3)
        assert float(t3[label]["GR-B"]) == pytest.approx(gr, abs=1e-3)
        assert float(t3[label]["SS-B diff to BaseSFT"]) == pytest.approx(ss - bss, abs=1e-3)
    # Table 4: B-SFT, static (its own config), decaying (= the Table 1 LLMLingua-2 row for 3B).
    t4 = {r["variant"]: r for r in csv.DictReader((out / "table4.csv").open())}
    assert float(t4["decaying"]["mean"]) == pytest.approx(means[("llmlingua2", "Avg.")], abs=1e-3)
    static = _stats([columns(f"lima_llama3b_llmlingua2_static_seed{s}")[8] for s in (1, 2)])[0]
    assert float(t4["static"]["mean"]) == pytest.approx(static, abs=1e-3)
    assert float(t4["B-SFT"]["paper"]) == 40.55
    md = (out / "tables.md").read_text()
    assert "## Table 1: LIMA" in md and "## Table 3" in md and "## Table 4" in md
    assert "| Method | MMLU:0 | MMLU:5 | MathQA | ARC-C | OpenBookQA | HellaSwag | TruthfulQA | IFEval | Avg. |" in md
    assert "(paper 52.78, " in md and "(paper 41.11)" in md

    # A second call trains, evaluates and runs lm_eval nothing again.
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env)
    assert p.returncode == 0 and "[reproduce] train" not in p.stderr and "[reproduce] lm_eval" not in p.stderr
    assert "[reproduce] eval" not in p.stderr, p.stderr[-2000:]


def test_tables_eta_sweep_and_missing_rows(tmp_path):
    """The Figure 3 table from result files alone (reproduce.sh --eta-sweep trains the same names)."""
    rng = random.Random(0)
    res = tmp_path / "r"
    want = {}
    for run in ["lima_llama3b_tfidf_eta55", "lima_llama3b_tfidf_eta90"]:
        avgs = []
        for s in (1, 2):
            d = res / "evals" / f"{run}_seed{s}"
            d.mkdir(parents=True)
            vals = {}
            for task, shots in [("mmlu", 0), ("mmlu", 5), ("mathqa", 0), ("arc_challenge", 0), ("openbookqa", 0),
                                ("hellaswag", 0), ("truthfulqa_mc1", 0), ("truthfulqa_mc2", 0)]:
                v = rng.random()
                vals[(task, shots)] = 100 * v
                (d / f"{task}_{shots}shot.json").write_text(json.dumps({"metrics": {"acc": {"value": v}}}))
            gen = {}
            for task, names in [("truthfulqa_gen", rt.TQA_GEN), ("ifeval", rt.IFEVAL)]:
                g = res / "lm_eval" / f"{run}_seed{s}" / task / "m"
                g.mkdir(parents=True)
                r = {f"{n},none": rng.random() for n in names}
                gen[task] = [100 * r[f"{n},none"] for n in names]
                (g / "results_1.json").write_text(json.dumps({"results": {task: r}}))
            cols = [vals[("mmlu", 0)], vals[("mmlu", 5)], vals[("mathqa", 0)], vals[("arc_challenge", 0)],
                    vals[("openbookqa", 0)], vals[("hellaswag", 0)],
                    (sum(gen["truthfulqa_gen"]) + vals[("truthfulqa_mc1", 0)] + vals[("truthfulqa_mc2", 0)]) / 6,
                    sum(gen["ifeval"]) / 4]
            avgs.append(sum(cols) / 8)
        want[run[-2:]] = _stats(avgs)
    p = subprocess.run([PY, "scripts/reproduce_tables.py", str(res), "--seeds", "1 2", "--datasets", "lima",
                        "--models", "3b", "--eta-sweep", "55 90"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = {(r["method"], r["eta"]): r for r in csv.DictReader((res / "table_eta_sweep.csv").open())}
    for eta, (m, sd) in want.items():
        assert float(rows[("TF-IDF", eta)]["mean"]) == pytest.approx(m, abs=1e-3)
        assert float(rows[("TF-IDF", eta)]["std"]) == pytest.approx(sd, abs=1e-3)
    assert ("Rho-1", "55") not in rows  # no results: left out, and said so
    assert "lima_llama3b_rho1_eta55 seed 1: missing" in p.stderr
    # A malformed result file stops with its path.
    bad = res / "evals" / "lima_llama3b_tfidf_eta55_seed1" / "mmlu_0shot.json"
    bad.write_text("{not json")
    p = subprocess.run([PY, "scripts/reproduce_tables.py", str(res), "--seeds", "1 2", "--datasets", "lima",
                        "--models", "3b", "--eta-sweep", "55"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode != 0 and str(bad) in p.stderr


@needs_bin
def test_reproduce_tables_usage_errors(tmp_path):
    base = ["bash", "scripts/reproduce.sh", "--no-setup", "--tables"]
    for extra, msg in [(["--configs", "configs/demo_tiny.yaml"], "drop --configs"),
                       (["--datasets", "dolly"], "unknown 'dolly'"), (["--models", "70b"], "unknown '70b'"),
                       (["--eval-dir", str(tmp_path / "none"), "--lm-eval", "none"], "file not found"),
                       (["--eta-sweep", "x"], "not a percentile")]:
        p = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True)
        assert p.returncode == 2 and msg in p.stderr, (extra, p.stderr)


# ---- reproduce.sh's options are documented; reproduce_tables.py refuses what cannot be results ----
def script_options():
    """The options reproduce.sh's argument loop accepts (its case labels)."""
    text = (ROOT / "scripts/reproduce.sh").read_text()
    loop = text[text.index('while (($#)); do'):text.index("esac")]
    return sorted({o for o in re.findall(r"^\s+(-[-\w|]+)\)", loop, re.M) for o in o.split("|")})


def test_every_reproduce_option_is_in_help_and_docs():
    opts = script_options()
    assert {"--no-setup", "--eval-dir", "--metric", "--tables", "--configs", "--task"} <= set(opts), opts
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0 and p.stdout.startswith("Reproduces the SFT-GO paper's tables")
    assert "set -euo" not in p.stdout and not any(l.startswith("#") for l in p.stdout.splitlines())
    docs = (ROOT / "docs/reproduce.md").read_text()
    for o in opts:
        assert re.search(rf"(^|[\s,]){re.escape(o)}([\s,=]|$)", p.stdout, re.M), f"{o} not in --help"
        if o not in ("-h", "--help"):
            assert f"`{o}" in docs or f" {o} " in docs or f"{o}`" in docs, f"{o} not in docs/reproduce.md"
    for text in (p.stdout, docs):  # --no-setup and --eval-dir say what they do
        assert re.search(r"--no-setup`?:? +skip `?scripts/setup.sh", text), text[:200]
        assert re.search(r"--eval-dir[` ]", text) and "mmlu_dev.jsonl" in text
    p = subprocess.run(["bash", "scripts/reproduce.sh", "--no-setup", "--configs", "configs/demo_tiny.yaml",
                        "--task", "arc_easy=data/eval/samples/arc_challenge.jsonl", "--metric", "f1"],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 2 and "--metric: 'f1' is not acc or acc_norm" in p.stderr, p.stderr


def tables(results, *extra):
    return subprocess.run([PY, "scripts/reproduce_tables.py", str(results), "--datasets", "lima", "--models", "3b",
                           *extra], cwd=ROOT, capture_output=True, text=True)


def test_reproduce_tables_refuses_empty_or_mistyped_results(tmp_path):
    p = tables(tmp_path / "resluts")  # a typo: no such directory
    assert p.returncode == 1 and f"{tmp_path / 'resluts'}: no such directory" in p.stderr, p.stderr
    (tmp_path / "file").write_text("x")
    p = tables(tmp_path / "file")
    assert p.returncode == 1 and "not a directory" in p.stderr, p.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    p = tables(empty)
    assert p.returncode == 1 and "no evals/ directory" in p.stderr, p.stderr
    # RESULTS/evals passed instead of RESULTS.
    (tmp_path / "results/evals/lima_llama3b_sft_seed1").mkdir(parents=True)
    p = tables(tmp_path / "results/evals")
    assert p.returncode == 1 and "pass its parent" in p.stderr, p.stderr
    # Results of other seeds than asked: nothing to tabulate, nothing written, and it says what it found.
    p = tables(tmp_path / "results", "--seeds", "7")
    assert p.returncode == 1 and "no complete results for any row" in p.stderr, p.stderr
    assert "lima_llama3b_sft_seed1" in p.stderr and "lima_llama3b_sft_seed7/mmlu_0shot.json" in p.stderr
    assert sorted(x.name for x in (tmp_path / "results").iterdir()) == ["evals"]


def test_tables_md_names_its_metric(tmp_path):
    """One complete row (LIMA 3B Baseline-SFT, seed 1) of known values: tables.md says which metric the
    four acc/acc_norm columns use, and the cells follow --metric."""
    res = tmp_path / "results"
    d = res / "evals" / "lima_llama3b_sft_seed1"
    d.mkdir(parents=True)
    for task, shots in [("mmlu", 0), ("mmlu", 5), ("mathqa", 0), ("arc_challenge", 0), ("openbookqa", 0),
                        ("hellaswag", 0), ("truthfulqa_mc1", 0), ("truthfulqa_mc2", 0)]:
        m = {"acc": {"value": 0.25}}
        if task in ("mathqa", "arc_challenge", "openbookqa", "hellaswag"):
            m["acc_norm"] = {"value": 0.75}
        (d / f"{task}_{shots}shot.json").write_text(json.dumps({"metrics": m}))
    for task, names in [("truthfulqa_gen", rt.TQA_GEN), ("ifeval", rt.IFEVAL)]:
        g = res / "lm_eval" / "lima_llama3b_sft_seed1" / task / "m"
        g.mkdir(parents=True)
        (g / "results_1.json").write_text(json.dumps({"results": {task: {f"{n},none": 0.5 for n in names}}}))
    for metric, arc in (("acc", 25.0), ("acc_norm", 75.0)):
        p = tables(res, "--seeds", "1", "--metric", metric)
        assert p.returncode == 0, p.stderr
        md = (res / "tables.md").read_text()
        assert f"Metric: MathQA, ARC-C, OpenBookQA and HellaSwag {metric} " in md and "MMLU and TruthfulQA MC1/MC2 acc" in md
        row = next(r for r in csv.DictReader((res / "table1.csv").open()) if r["column"] == "ARC-C")
        assert float(row["mean"]) == pytest.approx(arc)
        row = next(r for r in csv.DictReader((res / "table1.csv").open()) if r["column"] == "MMLU:0")
        assert float(row["mean"]) == pytest.approx(25.0)
