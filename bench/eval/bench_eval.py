#!/usr/bin/env python3
"""Eval throughput: `sftgo-train eval` vs lm_eval's HFLM on the same checkpoint, task file and CPU,
side by side in one run. Usage: bench_eval.py [--docs N] [--hidden H] [--layers L] [--threads T]

Both score the same requests (synthetic text through the demo tokenizer, 4 choices per question):
ARC-Challenge 0-shot (multi-token choices) and MMLU 5-shot (long contexts, one-token choices).
Timed: ours = the whole `sftgo-train eval` process (model load, tokenisation, scoring, metrics),
with the default shared-context path and with --no-share-context; lm_eval = simple_evaluate on a
prebuilt task with an already loaded HFLM (its model load excluded). One thread by default: on a
shared 2-core machine OpenMP barriers of two threads dominate small forwards.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
import torch  # noqa: E402
import transformers  # noqa: E402
from lm_eval import evaluator  # noqa: E402
from lm_eval.api.task import ConfigurableTask  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402
from lm_eval.tasks._yaml_loader import load_yaml  # noqa: E402
import lm_eval  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build")) / "bin" / "sftgo-train"
WORDS = ("the a plant water sun light energy cell animal rock heat cold move grow food air earth moon "
         "star metal wood gas liquid solid force push pull fast slow bright dark").split()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=200)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rnd = random.Random(0)
    tmp = Path(tempfile.mkdtemp(prefix="bench_eval_"))
    model_dir = tmp / "model"
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=a.hidden, intermediate_size=a.hidden * 3,
                                   num_hidden_layers=a.layers, num_attention_heads=a.hidden // 64,
                                   num_key_value_heads=max(1, a.hidden // 256), head_dim=64,
                                   max_position_embeddings=2048, tie_word_embeddings=False)
    transformers.LlamaForCausalLM(cfg).float().save_pretrained(model_dir)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "data/demo/tokenizer" / f, model_dir / f)
    sent = lambda n: " ".join(rnd.choice(WORDS) for _ in range(n))  # noqa: E731
    arc = [{"question": sent(rnd.randint(15, 40)) + "?", "answerKey": "ABCD"[i % 4],
            "choices": {"text": [sent(rnd.randint(2, 8)) for _ in range(4)], "label": list("ABCD")}}
           for i in range(a.docs)]
    mmlu = lambda n: [{"question": sent(rnd.randint(15, 40)) + "?", "subject": "anatomy",  # noqa: E731
                       "choices": [sent(rnd.randint(1, 6)) for _ in range(4)], "answer": i % 4} for i in range(n)]
    files = {"arc": tmp / "arc.jsonl", "mmlu": tmp / "mmlu.jsonl", "dev": tmp / "dev.jsonl"}
    for key, rows in (("arc", arc), ("mmlu", mmlu(a.docs)), ("dev", mmlu(5))):
        files[key].write_text("".join(json.dumps(d) + "\n" for d in rows))
    lm = HFLM(pretrained=str(model_dir), device="cpu", batch_size=16)
    print(f"model hidden {a.hidden} x {a.layers} layers ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.1f}M "
          f"params), {a.docs} docs per task, 4 choices, {a.threads} thread(s), CPU")
    print("| workload | sftgo-train eval (default) | --no-share-context | lm_eval HFLM | lm_eval / default |")
    print("|---|---|---|---|---|")
    for name, task_name, yaml_rel, shots, splits in (
            ("ARC-Challenge 0-shot", "arc_challenge", "arc/arc_challenge.yaml", 0, {"test": files["arc"]}),
            ("MMLU 5-shot", "mmlu", "mmlu/default/mmlu_anatomy.yaml", 5, {"test": files["mmlu"], "dev": files["dev"]})):
        times = []
        for extra in ([], ["--no-share-context"]):
            t0 = time.perf_counter()
            cmd = [str(BIN), "eval", "--model", str(model_dir), "--task", task_name, "--data", str(splits["test"]),
                   "--shots", str(shots), "--device", "cpu", "--out", str(tmp / "ours.json"), *extra]
            if "dev" in splits:
                cmd += ["--fewshot-data", str(splits["dev"])]
            subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": str(a.threads)})
            times.append(time.perf_counter() - t0)
        mine = json.loads((tmp / "ours.json").read_text())["metrics"]["acc"]["value"]
        c = load_yaml(Path(lm_eval.__file__).parent / "tasks" / yaml_rel)
        c.pop("tag", None)
        c.update({"dataset_path": "json", "dataset_name": None,
                  "dataset_kwargs": {"data_files": {k: str(v) for k, v in splits.items()}},
                  "test_split": "test", "validation_split": None, "training_split": None})
        task = ConfigurableTask(config=c)
        t0 = time.perf_counter()
        r = evaluator.simple_evaluate(model=lm, tasks=[task], num_fewshot=shots, bootstrap_iters=0,
                                      task_manager=TaskManager(include_defaults=False))
        theirs = time.perf_counter() - t0
        assert abs(mine - r["results"][c["task"]]["acc,none"]) < 1e-9, "the two disagree on acc"
        cell = lambda t: f"{t:.2f} s ({a.docs / t:.1f} docs/s)"  # noqa: E731
        print(f"| {name} | {cell(times[0])} | {cell(times[1])} | {cell(theirs)} | {theirs / times[0]:.2f}x |")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
