"""`sftgo-train eval` against lm-evaluation-harness (lm_eval, PyPI) on the same tiny checkpoint.

lm_eval cannot download its datasets here, so each task is built from lm_eval's own task YAML
(includes and !function utils resolved by lm_eval's loader) with the dataset switched to the
local JSONL files this test writes; lm_eval's HFLM scores it on the same HF checkpoint and
lm_eval computes the metrics (its process_results, mean_stderr, pooled_sample_stderr).
Few-shot: both sides take the first K examples of the few-shot file (lm_eval's first_n sampler,
which is MMLU's default).
"""
import copy
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
lm_eval = pytest.importorskip("lm_eval")
from lm_eval import evaluator  # noqa: E402
from lm_eval.api.metrics import pooled_sample_stderr  # noqa: E402
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
TASKS = Path(lm_eval.__file__).parent / "tasks"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
# Tasks are passed as built objects: no need for lm_eval to index its ~14k task YAMLs per call.
NO_INDEX = TaskManager(include_defaults=False)

# Per-choice log-likelihoods are sums of fp32 log-softmax values from two implementations of the
# same fp32 forward (different kernels and padding); HFLM also sums them in fp32, so its rounding
# grows with |ll| (up to ~450 here, long TruthfulQA / few-shot MMLU choices). Observed: max 2.6e-5,
# hence the 1e-4 absolute holds with margin. Metrics are exact functions of those values:
# the closest top-two gap in these fixtures is 5e-3, far above 1e-4, so acc cannot flip; they are
# compared to 1e-9 (acc) and 1e-6 (the mc2 probability mass and the stderrs).
LL_TOL = 1e-4

ARC = [
    {"question": "Which gas do plants take in?", "answerKey": "B",
     "choices": {"text": ["oxygen", "carbon dioxide", "helium", "neon"], "label": ["A", "B", "C", "D"]}},
    {"question": "What melts ice?", "answerKey": "1", "choices": {"text": ["heat", "cold"], "label": ["1", "2"]}},
    {"question": "Where is the sun?", "answerKey": "A",
     "choices": {"text": ["in the sky", "underground", "in water"], "label": ["A", "B", "C"]}},
    {"question": "Which word is French?", "answerKey": "C",
     "choices": {"text": ["house", "tree", "caf\u00e9 na\u00efve", "dog"], "label": ["A", "B", "C", "D"]}},
    {"question": "How many legs has a spider? ", "answerKey": "D",
     "choices": {"text": ["two", "four", "six", "eight"], "label": ["A", "B", "C", "D"]}},
]
OBQA = [
    {"id": "1", "question_stem": "The sun is responsible for", "answerKey": "D",
     "choices": {"text": ["puppies learning new tricks", "children growing up", "flowers wilting in a vase",
                          "plants sprouting, blooming and wilting"], "label": ["A", "B", "C", "D"]}},
    {"id": "2", "question_stem": "When standing miles away from a mountain, it will appear", "answerKey": " B",
     "choices": {"text": ["larger", "smaller", "louder", "brighter"], "label": ["A", "B", "C", "D"]}},
    {"id": "3", "question_stem": "Water freezes at", "answerKey": "A",
     "choices": {"text": ["zero degrees", "ten degrees", "fifty degrees", "boiling"], "label": ["A", "B", "C", "D"]}},
]
HELLASWAG = [
    {"ind": 4, "activity_label": "Removing ice from car", "ctx_a": "Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles.",
     "ctx_b": "THEN", "ctx": "x", "endings": [", the man adds wax to the windshield and cuts it.", ", a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled.", ", the man puts on a christmas coat, knitted with netting.", ", the man continues removing the snow on his car."],
     "source_id": "a", "split": "val", "split_type": "indomain", "label": "3"},
    {"ind": 5, "activity_label": "Home and Garden", "ctx_a": "[header] How to grow a plant [title] Choose a pot.",
     "ctx_b": "make sure it [step] drains", "ctx": "x", "endings": ["well [substeps] always.", "badly.", "[title] never  twice.", "sometimes."],
     "source_id": "b", "split": "val", "split_type": "indomain", "label": "0"},
    {"ind": 6, "activity_label": "Baking cookies", "ctx_a": "A woman mixes flour.", "ctx_b": "she",
     "ctx": "x", "endings": ["bakes the dough.", "swims.", "sings loudly.", "drives away."],
     "source_id": "c", "split": "val", "split_type": "indomain", "label": "0"},
]
MMLU_TEST = [
    {"question": "What is 2 + 2?", "subject": "elementary_mathematics", "choices": ["3", "4", "5", "22"], "answer": 1},
    {"question": " Solve x + 1 = 3. ", "subject": "elementary_mathematics", "choices": ["1", "2", "3", "4"], "answer": 1},
    {"question": "Which organ pumps blood?", "subject": "anatomy", "choices": ["lung", "liver", "heart", "skin"], "answer": 2},
    {"question": "Which bone is in the leg?", "subject": "anatomy", "choices": ["femur", "ulna", "radius", "skull"], "answer": 0},
    {"question": "Who wrote the Republic?", "subject": "philosophy", "choices": ["Kant", "Plato", "Hume", "Locke"], "answer": 1},
    {"question": "Ethics studies", "subject": "philosophy", "choices": ["rocks", "stars", "right action", "cells"], "answer": 2},
]
MMLU_DEV = [
    {"question": f"Dev {s} question {i}?", "subject": s, "choices": [f"a{i}", f"b{i}", f"c{i}", f"d{i}"], "answer": i % 4}
    for s in ("elementary_mathematics", "anatomy", "philosophy") for i in range(5)
]
TQA = [
    {"question": "What happens if you eat watermelon seeds?",
     "mc1_targets": {"choices": ["Nothing happens.", "You grow watermelons in your stomach.", "You get sick."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["Nothing happens.", "The seeds pass through you.", "You grow watermelons.", "You die."], "labels": [1, 1, 0, 0]}},
    {"question": "Is the Earth flat?",
     "mc1_targets": {"choices": ["No, it is round.", "Yes, it is flat."], "labels": [1, 0]},
     "mc2_targets": {"choices": ["No.", "No, it is roughly a sphere.", "Yes."], "labels": [1, 1, 0]}},
    {"question": "Can pigs fly?",
     "mc1_targets": {"choices": ["No, pigs cannot fly.", "Yes.", "Only at night."], "labels": [1, 0, 0]},
     "mc2_targets": {"choices": ["No, pigs cannot fly.", "Yes.", "Sometimes.", "Pigs fly in winter."], "labels": [1, 0, 0, 0]}},
]
MATHQA = [
    {"Problem": "the banker ' s gain of a certain sum due 3 years hence at 10 % per annum is rs . 36 . what is the present worth ?",
     "Rationale": "x", "options": "a ) rs . 400 , b ) rs . 300 , c ) rs . 500 , d ) rs . 350 , e ) none of these",
     "correct": "a", "annotated_formula": "x", "linear_formula": "x", "category": "gain"},
    {"Problem": "what is 5 + 7 ?", "Rationale": "x", "options": "['a ) 10', 'b ) 12', 'c ) 14', 'd ) 11', 'e ) 13']",
     "correct": "b", "annotated_formula": "x", "linear_formula": "x", "category": "general"},
    {"Problem": "a train runs 60 km in 1 hour . speed ?", "Rationale": "x",
     "options": "a ) 60 km / h , b ) 30 km / h , c ) 90 km / h , d ) 45 km / h , e ) 120 km / h",
     "correct": "a", "annotated_formula": "x", "linear_formula": "x", "category": "physics"},
]
ARC_TRAIN = [
    {"question": "What do bees make?", "answerKey": "A", "choices": {"text": ["honey", "milk"], "label": ["A", "B"]}},
    {"question": "What is frozen water?", "answerKey": "B", "choices": {"text": ["steam", "ice", "fog"], "label": ["A", "B", "C"]}},
    {"question": "Unused", "answerKey": "A", "choices": {"text": ["x", "y"], "label": ["A", "B"]}},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module", params=["plain", "bos"])
def setup(request, tmp_path_factory):
    """A tiny random Llama with the demo tokenizer; 'bos': its tokenizer.json adds BOS as
    Llama-3's does (TemplateProcessing), exercising HFLM's add-special-tokens path."""
    d = tmp_path_factory.mktemp(f"eval_{request.param}")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=1024, initializer_range=0.1, tie_word_embeddings=False,
                                   bos_token_id=1335, eos_token_id=1336)
    model_dir = d / "model"
    transformers.LlamaForCausalLM(cfg).float().eval().save_pretrained(model_dir)
    tok = json.loads((DEMO_TOK / "tokenizer.json").read_text())
    if request.param == "bos":
        bos = "<|begin_of_text|>"
        tok["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [1335], "tokens": [bos]}}}
    (model_dir / "tokenizer.json").write_text(json.dumps(tok))
    shutil.copy(DEMO_TOK / "tokenizer_config.json", model_dir / "tokenizer_config.json")
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=8)
    return {"dir": d, "model": model_dir, "lm": lm, "bos": request.param == "bos"}


def lm_eval_task(yaml_rel, files, fewshot_split=None):
    """lm_eval's task config with the dataset replaced by local JSONL files (split -> path)."""
    cfg = load_yaml(TASKS / yaml_rel)
    cfg.pop("tag", None)
    cfg.update({"dataset_path": "json", "dataset_name": None,
                "dataset_kwargs": {"data_files": {k: str(v) for k, v in files.items()}},
                "test_split": "test", "validation_split": None,
                "training_split": "train" if "train" in files else None})
    if fewshot_split:
        cfg["fewshot_split"] = fewshot_split
        cfg["fewshot_config"] = {"sampler": "first_n"}
    return ConfigurableTask(config=cfg)


def run_lm_eval(lm, task, shots):
    r = evaluator.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, log_samples=True,
                                  bootstrap_iters=100, task_manager=NO_INDEX, random_seed=0, numpy_random_seed=0, torch_random_seed=0)
    name = task.config.task
    samples = sorted(r["samples"][name], key=lambda s: s["doc_id"])
    return r["results"][name], samples


def run_ours(setup, task, data, shots=0, fewshot=None, extra=()):
    out = setup["dir"] / f"{task}_{shots}.json"
    samples = setup["dir"] / f"{task}_{shots}.samples.jsonl"
    args = [BIN, "eval", "--model", setup["model"], "--task", task, "--data", data, "--shots", shots,
            "--out", out, "--samples", samples, "--device", "cpu", "--batch-size", "3", *extra]
    if fewshot:
        args += ["--fewshot-data", fewshot]
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "| " + task + " |" in p.stdout
    return json.loads(out.read_text()), [json.loads(l) for l in samples.read_text().splitlines()]


def compare_samples(theirs, ours, mc2=False):
    assert len(theirs) == len(ours)
    for t, o in zip(theirs, ours):
        ctxs = {a[0] for a in t["arguments"]}
        assert len(ctxs) == 1 and o["context"] == ctxs.pop()  # the same prompt string, exactly
        assert [a[1] for a in t["arguments"]] == [" " + c for c in o["choices"]]
        lls = [r[0][0] for r in t["resps"]]
        greedy = [r[0][1] for r in t["resps"]]
        assert o["loglikelihoods"] == pytest.approx(lls, abs=LL_TOL, rel=0)
        assert o["is_greedy"] == greedy
        for k in ("acc", "acc_norm"):
            if k in t:
                assert o["metrics"][k] == pytest.approx(t[k], abs=1e-6 if mc2 else 1e-9), (k, o["source"])


def compare_metrics(theirs, ours, names):
    for m in names:
        assert ours["metrics"][m]["value"] == pytest.approx(theirs[f"{m},none"], abs=1e-6)
        assert ours["metrics"][m]["stderr"] == pytest.approx(theirs[f"{m}_stderr,none"], abs=1e-6)


@pytest.mark.parametrize("task,yaml_rel,rows,metrics", [
    ("arc_challenge", "arc/arc_challenge.yaml", ARC, ["acc", "acc_norm"]),
    ("arc_easy", "arc/arc_easy.yaml", ARC, ["acc", "acc_norm"]),
    ("openbookqa", "openbookqa/openbookqa.yaml", OBQA, ["acc", "acc_norm"]),
    ("hellaswag", "hellaswag/hellaswag.yaml", HELLASWAG, ["acc", "acc_norm"]),
    ("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", TQA, ["acc"]),
    ("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", TQA, ["acc"]),
    ("mathqa", "mathqa/mathqa.yaml", MATHQA, ["acc", "acc_norm"]),
])
def test_zero_shot_matches_lm_eval(setup, task, yaml_rel, rows, metrics):
    data = write_jsonl(setup["dir"] / f"{task}.jsonl", rows)
    theirs, t_samples = run_lm_eval(setup["lm"], lm_eval_task(yaml_rel, {"test": data}), 0)
    ours, o_samples = run_ours(setup, task, data)
    assert ours["docs"] == len(rows)
    compare_samples(t_samples, o_samples, mc2=task == "truthfulqa_mc2")
    compare_metrics(theirs, ours, metrics)
    # The 'bos' variant really makes HFLM prepend BOS (and the plain one does not).
    assert (setup["lm"].tok_encode("Question")[0] == 1335) == setup["bos"]


@pytest.mark.parametrize("path", [[], ["--no-share-context"]])
def test_arc_fewshot_and_limit_match_lm_eval(setup, path):
    """Both scoring paths: contexts once + continuations on the KV cache (default), full sequences."""
    data = write_jsonl(setup["dir"] / "arc_fs.jsonl", ARC)
    train = write_jsonl(setup["dir"] / "arc_train.jsonl", ARC_TRAIN)
    task = lm_eval_task("arc/arc_challenge.yaml", {"test": data, "train": train}, fewshot_split="train")
    r = evaluator.simple_evaluate(model=setup["lm"], tasks=[task], num_fewshot=2, log_samples=True, limit=3,
                                  bootstrap_iters=100, task_manager=NO_INDEX)
    t_samples = sorted(r["samples"]["arc_challenge"], key=lambda s: s["doc_id"])
    ours, o_samples = run_ours(setup, "arc_challenge", data, shots=2, fewshot=train, extra=["--limit", "3", *path])
    assert ours["docs"] == 3 and o_samples[0]["context"].startswith("Question: What do bees make?\nAnswer: honey\n\n")
    compare_samples(t_samples, o_samples)
    compare_metrics(r["results"]["arc_challenge"], ours, ["acc", "acc_norm"])


@pytest.mark.parametrize("path", [[], ["--no-share-context"]])
def test_left_truncation_matches_lm_eval(setup, path):
    """Contexts longer than the window lose tokens on the left exactly as HFLM(max_length=...)."""
    data = write_jsonl(setup["dir"] / "tqa_trunc.jsonl", TQA)
    lm = HFLM(pretrained=str(setup["model"]), device="cpu", batch_size=8, max_length=40)
    task = lm_eval_task("truthfulqa/truthfulqa_mc2.yaml", {"test": data})
    theirs, t_samples = run_lm_eval(lm, task, 0)
    assert len(lm.tok_encode(t_samples[0]["arguments"][0][0])) > 40  # really truncated
    ours, o_samples = run_ours(setup, "truthfulqa_mc2", data, extra=["--max-length", "40", *path])
    compare_samples(t_samples, o_samples, mc2=True)
    compare_metrics(theirs, ours, ["acc"])


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_matches_lm_eval(setup, shots):
    test = setup["dir"] / "mmlu_test.jsonl"
    dev = write_jsonl(setup["dir"] / "mmlu_dev.jsonl", MMLU_DEV)
    write_jsonl(test, MMLU_TEST)
    ours, o_samples = run_ours(setup, "mmlu", test, shots=shots, fewshot=dev)
    by_subject = {}
    for subject in dict.fromkeys(r["subject"] for r in MMLU_TEST):
        sub_test = write_jsonl(setup["dir"] / f"mmlu_{subject}_test.jsonl", [r for r in MMLU_TEST if r["subject"] == subject])
        sub_dev = write_jsonl(setup["dir"] / f"mmlu_{subject}_dev.jsonl", [r for r in MMLU_DEV if r["subject"] == subject])
        task = lm_eval_task(f"mmlu/default/mmlu_{subject}.yaml", {"test": sub_test, "dev": sub_dev})
        by_subject[subject] = run_lm_eval(setup["lm"], task, shots)
    # Per-document prompts and log-likelihoods, in file order.
    t_samples = []
    for row in MMLU_TEST:
        s = by_subject[row["subject"]][1]
        t_samples.append(s.pop(0))
    compare_samples(t_samples, o_samples)
    # Subjects, categories and the mmlu group as lm_eval aggregates them (size-weighted means,
    # pooled stderr at each level).
    cats = {}
    for subject, (res, _) in by_subject.items():
        g = ours["groups"][f"mmlu_{subject}"]
        assert g["value"] == pytest.approx(res["acc,none"], abs=1e-9)
        assert g["stderr"] == pytest.approx(res["acc_stderr,none"], abs=1e-9)
        cat = {"elementary_mathematics": "stem", "anatomy": "stem", "philosophy": "humanities"}[subject]
        cats.setdefault(cat, []).append((res["acc,none"], res["acc_stderr,none"], 2))
    cat_vals = {}
    for cat, members in cats.items():
        n = sum(m[2] for m in members)
        value = sum(m[0] * m[2] for m in members) / n
        se = pooled_sample_stderr([m[1] for m in members], [m[2] for m in members])
        cat_vals[cat] = (value, se, n)
        assert ours["groups"][f"mmlu_{cat}"]["value"] == pytest.approx(value, abs=1e-9)
        assert ours["groups"][f"mmlu_{cat}"]["stderr"] == pytest.approx(se, abs=1e-9)
    total = sum(v[2] for v in cat_vals.values())
    assert ours["metrics"]["acc"]["value"] == pytest.approx(sum(v[0] * v[2] for v in cat_vals.values()) / total, abs=1e-9)
    assert ours["metrics"]["acc"]["stderr"] == pytest.approx(
        pooled_sample_stderr([v[1] for v in cat_vals.values()], [v[2] for v in cat_vals.values()]), abs=1e-9)


def test_bad_task_files_name_the_line(tmp_path):
    model_dir = tmp_path / "m"  # never loaded: the task file is checked first
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(ARC[0]) + "\n" + json.dumps({**ARC[1], "answerKey": "Z"}) + "\n")
    p = subprocess.run([str(BIN), "eval", "--model", str(model_dir), "--task", "arc_challenge", "--data", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 1 and f"{bad}:2" in p.stderr and "out of range" in p.stderr, p.stderr
    p = subprocess.run([str(BIN), "eval", "--model", str(model_dir), "--task", "arc_chalenge", "--data", str(bad)],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "did you mean 'arc_challenge'" in p.stderr, p.stderr  # usage error


# ---- data/eval/samples: the shipped offline sample files, read by lm_eval's own task definitions ----
SAMPLES = ROOT / "data" / "eval" / "samples"


@pytest.mark.parametrize("task,yaml_rel,file,metrics", [
    ("arc_challenge", "arc/arc_challenge.yaml", "arc_challenge.jsonl", ["acc", "acc_norm"]),
    ("openbookqa", "openbookqa/openbookqa.yaml", "openbookqa.jsonl", ["acc", "acc_norm"]),
    ("hellaswag", "hellaswag/hellaswag.yaml", "hellaswag.jsonl", ["acc", "acc_norm"]),
    ("truthfulqa_mc1", "truthfulqa/truthfulqa_mc1.yaml", "truthfulqa_mc.jsonl", ["acc"]),
    ("truthfulqa_mc2", "truthfulqa/truthfulqa_mc2.yaml", "truthfulqa_mc.jsonl", ["acc"]),
    ("mathqa", "mathqa/mathqa.yaml", "mathqa.jsonl", ["acc", "acc_norm"]),
])
def test_sample_files_match_lm_eval(setup, task, yaml_rel, file, metrics):
    """Each shipped sample file is in its dataset's schema: lm_eval's task reads it unchanged and gets
    the prompts, log-likelihoods and metrics `eval` gets. Every choice is a distinct non-empty string
    and the gold answer one of them (what a hand-written file could get wrong)."""
    data = SAMPLES / file
    rows = [json.loads(l) for l in data.read_text().splitlines()]
    assert 4 <= len(rows) <= 10
    theirs, t_samples = run_lm_eval(setup["lm"], lm_eval_task(yaml_rel, {"test": data}), 0)
    ours, o_samples = run_ours(setup, task, data)
    assert ours["docs"] == len(rows)
    compare_samples(t_samples, o_samples, mc2=task == "truthfulqa_mc2")
    compare_metrics(theirs, ours, metrics)
    for o in o_samples:
        assert len(set(o["choices"])) == len(o["choices"]) >= 2 and all(c.strip() for c in o["choices"])


@pytest.mark.parametrize("shots", [0, 5])
def test_mmlu_sample_files_match_lm_eval(setup, shots):
    test, dev = SAMPLES / "mmlu.jsonl", SAMPLES / "mmlu_dev.jsonl"
    rows = [json.loads(l) for l in test.read_text().splitlines()]
    dev_rows = [json.loads(l) for l in dev.read_text().splitlines()]
    ours, o_samples = run_ours(setup, "mmlu", test, shots=shots, fewshot=dev)
    t_samples = []
    for subject in dict.fromkeys(r["subject"] for r in rows):
        assert sum(r["subject"] == subject for r in dev_rows) == 5  # 5-shot needs five dev questions per subject
        sub_test = write_jsonl(setup["dir"] / f"sample_{subject}_test.jsonl", [r for r in rows if r["subject"] == subject])
        sub_dev = write_jsonl(setup["dir"] / f"sample_{subject}_dev.jsonl", [r for r in dev_rows if r["subject"] == subject])
        res, samples = run_lm_eval(setup["lm"], lm_eval_task(f"mmlu/default/mmlu_{subject}.yaml",
                                                             {"test": sub_test, "dev": sub_dev}), shots)
        assert ours["groups"][f"mmlu_{subject}"]["value"] == pytest.approx(res["acc,none"], abs=1e-9)
        t_samples += samples
    by_context = {o["context"]: o for o in o_samples}
    assert len(by_context) == len(rows) == len(t_samples)
    for t in t_samples:  # lm_eval ran per subject: match documents by their prompt
        ctx = t["arguments"][0][0]
        compare_samples([t], [by_context[ctx]])
