#!/usr/bin/env python3
"""Peer benchmark: the same training job run by `sftgo-train` and by a plain Python loop on
transformers + PyTorch (the way an ML engineer would write SFT-GO in Python), side by side.

  bench/peer/bench_peer_train.py [--build DIR] [--tokenizer DIR] [--threads N] [--steps K] [--repeats R]
  bench/peer/bench_peer_train.py --baseline OTHER_BUILD_DIR ...   # sftgo's job only: this build vs another

With --baseline the Python side is skipped and the same sftgo job runs with both builds, alternating,
so a change to sftgo is measured against the build before it as a ratio on the same machine and load.

Same on both sides: the initial weights (one Hugging Face checkpoint written here by transformers),
the data (data/demo/demo_sft.jsonl, llama3 chat template, labels on assistant turns), the TF-IDF
groups (scikit-learn's TfidfVectorizer on the Python side, sftgo's own on ours: equal to 1e-15,
tests/python/test_grouping_tfidf.py), the SFT-GO loss (lambda 0.9, group means per micro-batch),
AdamW (betas 0.9/0.95, eps 1e-8, no weight decay), cosine schedule with 5% warmup, clipping at 1.0,
batch 16 = 2 micro-batches of 8, fp32, the same thread count. Each side runs in its own process, so
peak RSS (VmHWM) is per implementation.

Before timing, the Python side checks that its tokenization gives exactly the token and trained-token
counts sftgo reports for the same file (`sftgo-train data`), so both train on the same tokens.
Tokens/s = non-padding tokens per second of optimizer steps (the first step, with its warm-up
allocations, is excluded on both sides); the ratio is the result, as the machine may be shared.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data/demo/demo_sft.jsonl"
MODEL = dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, head_dim=32, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=2048, tie_word_embeddings=False)
LR, WARMUP_RATIO, LAMBDA, K_PERCENT = 3e-3, 0.05, 0.9, 30.0
GLOBAL_BATCH, MICRO_BATCH, MAX_LEN = 16, 8, 256


def peak_rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


# ---------------------------------------------------------------- data (Python side)
def pad_micro_batch(examples, groups, idx, pad):
    """Right-padded [B, S] ids, labels (-100 on padding), groups and attention mask of examples[idx]."""
    import torch

    s = max(len(examples[i][0]) for i in idx)
    ids = torch.full((len(idx), s), pad, dtype=torch.long)
    lab = torch.full((len(idx), s), -100, dtype=torch.long)
    grp = torch.zeros((len(idx), s), dtype=torch.long)
    att = torch.zeros((len(idx), s), dtype=torch.long)
    for r, i in enumerate(idx):
        e_ids, e_lab = examples[i]
        ids[r, :len(e_ids)] = torch.tensor(e_ids)
        lab[r, :len(e_ids)] = torch.tensor(e_lab)
        grp[r, :len(e_ids)] = torch.tensor(groups[i])
        att[r, :len(e_ids)] = 1
    return ids, lab, grp, att


def sft_go_loss(model, ids, lab, grp, att, lam):
    """One micro-batch's SFT-GO loss as sftgo computes it: lam * max(L_imp, L_unimp) + (1 - lam) * L_CE,
    each a mean over the trained tokens (a group without tokens drops out of the max)."""
    import torch
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]
    tgt, g = lab[:, 1:], grp[:, 1:]
    ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), tgt.reshape(-1), reduction="none",
                         ignore_index=-100).view_as(tgt)
    trained = tgt != -100
    imp, unimp = trained & (g == 1), trained & (g == 0)
    l_ce = ce[trained].mean()
    parts = [ce[m].mean() for m in (imp, unimp) if m.any()]
    return lam * torch.stack(parts).max() + (1 - lam) * l_ce


def tokenize_chat(tok, messages):
    """Llama-3 chat template as sftgo's `llama3` template renders it (BOS, then per message the
    role header, a blank line, the content and <|eot_id|>); labels on assistant content + eot."""
    sid = {s: tok.token_to_id(s) for s in ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")}
    ids, labels = [sid["<|begin_of_text|>"]], [-100]
    for m in messages:
        head = [sid["<|start_header_id|>"]] + tok.encode(m["role"], add_special_tokens=False).ids + \
               [sid["<|end_header_id|>"]] + tok.encode("\n\n", add_special_tokens=False).ids
        body = tok.encode(m["content"], add_special_tokens=False).ids + [sid["<|eot_id|>"]]
        ids += head + body
        labels += [-100] * len(head) + (body if m["role"] == "assistant" else [-100] * len(body))
    return ids[:MAX_LEN], labels[:MAX_LEN]


def tfidf_groups(examples, k_percent):
    """Top-k% TF-IDF of each example's response tokens (terms = token ids), scikit-learn scores."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    docs = [" ".join(str(t) for t, l in zip(ids, lab) if l != -100) for ids, lab in examples]
    vec = TfidfVectorizer(token_pattern=r"\S+", lowercase=False)
    mat = vec.fit_transform(docs).tocsr()
    vocab = vec.vocabulary_
    groups = []
    for row, (ids, lab) in enumerate(examples):
        # the label at position t is the token predicted there; score it by its tf-idf weight
        scores = {int(t): mat[row, vocab[t]] for t in set(docs[row].split())}
        trained = [t for t, l in enumerate(lab) if l != -100]
        n_imp = min(len(trained), math.ceil(k_percent / 100 * len(trained) - 1e-9))
        order = sorted(trained, key=lambda t: (-scores[lab[t]], t))
        g = [0] * len(ids)
        for t in order[:n_imp]:
            g[t] = 1
        groups.append(g)
    return groups


# ---------------------------------------------------------------- Python trainer
def python_train(args, ckpt: Path, out_json: Path):
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaForCausalLM, get_cosine_schedule_with_warmup

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tok = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    records = [json.loads(l) for l in DATA.read_text().splitlines() if l.strip()]
    examples = [tokenize_chat(tok, r["messages"]) for r in records]
    n_tokens = sum(len(i) for i, _ in examples)
    n_trained = sum(sum(1 for l in lab if l != -100) for _, lab in examples)
    if (n_tokens, n_trained) != (args.expect_tokens, args.expect_trained):
        raise SystemExit(f"python tokenization gives {n_tokens} tokens / {n_trained} trained, sftgo "
                         f"{args.expect_tokens} / {args.expect_trained}: the two sides would not train on the same data")
    groups = tfidf_groups(examples, K_PERCENT)

    model = LlamaForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    sched = get_cosine_schedule_with_warmup(opt, math.ceil(WARMUP_RATIO * args.steps), args.steps)
    pad = tok.token_to_id("<|finetune_right_pad_id|>") or 0
    gen = torch.Generator().manual_seed(1234)
    order: list[int] = []

    def micro(idx):
        return pad_micro_batch(examples, groups, idx, pad)

    step_times, step_tokens, losses = [], [], []
    for step in range(args.steps):
        t0 = time.perf_counter()
        tokens = 0
        for _ in range(GLOBAL_BATCH // MICRO_BATCH):
            if len(order) < MICRO_BATCH:
                order += torch.randperm(len(examples), generator=gen).tolist()
            idx, order = order[:MICRO_BATCH], order[MICRO_BATCH:]
            ids, lab, grp, att = micro(idx)
            tokens += int(att.sum())
            loss = sft_go_loss(model, ids, lab, grp, att, LAMBDA)
            (loss / (GLOBAL_BATCH // MICRO_BATCH)).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        step_times.append(time.perf_counter() - t0)
        step_tokens.append(tokens)
        losses.append(float(loss.detach()))
    out_json.write_text(json.dumps({"impl": "transformers", "step_s": step_times, "tokens": step_tokens,
                                    "loss": losses, "peak_rss_mb": peak_rss_mb()}))


# ---------------------------------------------------------------- driver
def write_checkpoint(tok_dir: Path, out: Path):
    import torch
    from tokenizers import Tokenizer
    from transformers import LlamaConfig, LlamaForCausalLM
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, bos_token_id=None, eos_token_id=None, **MODEL))
    model.save_pretrained(out)
    return vocab


def sftgo_counts(binary: Path, sets: list[str]):
    out = subprocess.run([str(binary), "data", "--config", "configs/demo_tiny.yaml", *sets], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    tokens = int(re.search(r"^\s*tokens:\s+(\d+)", out, re.M).group(1))
    trained = int(re.search(r"^\s*trained tokens:\s+(\d+)", out, re.M).group(1))
    return tokens, trained


def run_sftgo(binary: Path, sets: list[str], run_dir: Path):
    cmd = ["/usr/bin/time", "-f", "%M", str(binary), "--config", "configs/demo_tiny.yaml", *sets,
           "--set", f"run.output_dir={run_dir}"]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"sftgo-train failed:\n{p.stderr[-3000:]}")
    rss_mb = int(p.stderr.strip().splitlines()[-1]) / 1024.0
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [l for l in lines if "tokens_per_s" in l]
    return {"impl": "sftgo", "step_s": [l["step_s"] for l in steps], "tokens": [l["tokens"] for l in steps],
            "loss": [l["loss"] for l in steps], "peak_rss_mb": rss_mb}


def summarize(r):
    t, n = r["step_s"][1:], r["tokens"][1:]
    return sum(n) / sum(t), r["peak_rss_mb"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", default=str(ROOT / "build"))
    ap.add_argument("--tokenizer", default=None, help="default: ../shared/data/llama3 if present, else data/demo/tokenizer")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2, help="alternating runs of each side; the median is reported")
    ap.add_argument("--baseline", default=None, help="another build dir: compare sftgo-train with it instead of Python")
    ap.add_argument("--python-worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--expect-tokens", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--expect-trained", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.python_worker:
        python_train(args, Path(args.ckpt), Path(args.python_worker))
        return
    if args.tokenizer is None:
        shared = ROOT.parent / "shared/data/llama3"
        args.tokenizer = str(shared if (shared / "tokenizer.json").exists() else ROOT / "data/demo/tokenizer")
    binary = Path(args.build) / "bin/sftgo-train"
    with tempfile.TemporaryDirectory(prefix="sftgo_peer_") as tmp:
        tmp = Path(tmp)
        vocab = write_checkpoint(Path(args.tokenizer), tmp / "ckpt")
        sets = ["--set", f"tokenizer.path={args.tokenizer}", "--set", f"model.path={tmp / 'ckpt'}", "--set", "model.preset=auto",
                "--set", "loss.scope=microbatch", "--set", f"train.max_steps={args.steps}",
                "--set", f"train.num_threads={args.threads}", "--set", f"data.cache_dir={tmp / 'cache'}",
                "--set", "train.log_every=1", "--set", "train.epochs=100"]
        tokens, trained = sftgo_counts(binary, sets)
        if args.baseline:
            baseline = Path(args.baseline) / "bin/sftgo-train"
            ab = {"this build": [], "baseline": []}
            for rep in range(args.repeats):
                ab["this build"].append(run_sftgo(binary, sets, tmp / f"a{rep}"))
                ab["baseline"].append(run_sftgo(baseline, sets, tmp / f"b{rep}"))
            med = {k: (statistics.median(summarize(r)[0] for r in v), statistics.median(summarize(r)[1] for r in v))
                   for k, v in ab.items()}
            same = ab["this build"][0]["loss"] == ab["baseline"][0]["loss"]
            print(f"{args.steps} steps, {args.threads} threads, {args.repeats} alternating runs each (median); "
                  f"losses {'identical' if same else 'DIFFER'}")
            print("| | tokens/s | peak RSS |\n|---|---|---|")
            for k, (tps, rss) in med.items():
                print(f"| {k} | {tps:.0f} | {rss:.0f} MB |")
            print(f"| this / baseline | {med['this build'][0] / med['baseline'][0]:.3f}x | "
                  f"{med['this build'][1] / med['baseline'][1]:.3f}x |")
            return
        results = {"sftgo": [], "transformers": []}
        for rep in range(args.repeats):
            results["sftgo"].append(run_sftgo(binary, sets, tmp / f"run{rep}"))
            out = tmp / f"py{rep}.json"
            subprocess.run([sys.executable, __file__, "--python-worker", str(out), "--ckpt", str(tmp / "ckpt"),
                            "--tokenizer", args.tokenizer, "--threads", str(args.threads), "--steps",
                            str(args.steps), "--expect-tokens", str(tokens), "--expect-trained", str(trained)],
                           check=True, env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
            results["transformers"].append(json.loads(out.read_text()))
    med = {k: (statistics.median(summarize(r)[0] for r in v), statistics.median(summarize(r)[1] for r in v))
           for k, v in results.items()}
    print(f"tokenizer {args.tokenizer} (vocab {vocab}), model {MODEL['num_hidden_layers']} layers x hidden "
          f"{MODEL['hidden_size']}, {args.steps} steps x batch {GLOBAL_BATCH}, {args.threads} threads, "
          f"{args.repeats} alternating runs each (median)")
    for k, v in results.items():  # different data orders: compare the curves' means, not single steps
        loss = v[0]["loss"]
        half = len(loss) // 2
        print(f"{k}: loss first {loss[0]:.4f}, mean of first half {statistics.mean(loss[:half]):.4f}, "
              f"mean of second half {statistics.mean(loss[half:]):.4f}")
    print("| | tokens/s | peak RSS |\n|---|---|---|")
    for k, (tps, rss) in med.items():
        print(f"| {k} | {tps:.0f} | {rss:.0f} MB |")
    print(f"| sftgo / transformers | {med['sftgo'][0] / med['transformers'][0]:.2f}x | "
          f"{med['sftgo'][1] / med['transformers'][1]:.2f}x |")
    print(json.dumps({"ratio_tokens_per_s": med["sftgo"][0] / med["transformers"][0],
                      "ratio_peak_rss": med["sftgo"][1] / med["transformers"][1]}))


if __name__ == "__main__":
    main()
