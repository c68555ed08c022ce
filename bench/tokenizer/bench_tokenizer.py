#!/usr/bin/env python3
"""Tokenizer throughput: sftgo (C++) vs Hugging Face `tokenizers` (Rust), single thread, same corpus.

Builds a deterministic >= 10 MB JSONL corpus: real Python source with its docstrings (code + English
prose, from the installed site-packages), synthetic English prose, and the hard cases of
scripts/gen_tokenizer_corpus.py. Then
  * HF: RAYON_NUM_THREADS=1 and TOKENIZERS_PARALLELISM=false, timed two ways -- encode_batch over
    the whole corpus (one Rust call, one thread) and encode() one string at a time (adds Python
    call overhead); the ratio uses the faster of the two, i.e. the one most favourable to HF;
  * sftgo: bench_tokenizer (C++), Tokenizer::encode one string at a time, best of --repeat;
checks that every id sequence is equal and prints MB/s and the ratio.

usage: bench_tokenizer.py [--tokenizer DIR] [--bin PATH] [--mb 12] [--repeat 2]
Reports the realistic part, the hard cases and the whole corpus separately.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ["RAYON_NUM_THREADS"] = "1"  # must be set before tokenizers starts its pool
os.environ["TOKENIZERS_PARALLELISM"] = "false"

REPO = Path(__file__).resolve().parents[2]

COMMON = ("the of and to a in is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her all she there would their we him been has when who will more no if out so said what up "
          "its about into than them can only other new some could time these two may then do first any my now such "
          "like our over man me even most made after also did many before must through back years where much your "
          "way well down should because each just those people how too little state good very make world still own "
          "see men work long get here between both life being under never day same another know while last might "
          "us great old year off come since against go came right used take three model training data results "
          "method approach performance learning system language network paper table figure section however").split()


def prose(rng, n_bytes):
    out, size = [], 0
    while size < n_bytes:
        sent = []
        for _ in range(rng.randint(6, 28)):
            w = COMMON[min(int(rng.paretovariate(1.1)) - 1, len(COMMON) - 1)] if rng.random() < 0.8 else rng.choice(COMMON)
            sent.append(w)
        s = " ".join(sent).capitalize() + rng.choice([".", ".", ".", "?", "!", ", and then", ";"])
        if rng.random() < 0.1:
            s += f" ({rng.randint(1, 2024)})"
        para = s if rng.random() < 0.7 else s + "\n\n"
        out.append(para)
        size += len(para) + 1
    # Group sentences into paragraph-sized documents.
    docs, cur = [], []
    for s in out:
        cur.append(s)
        if len(cur) >= rng.randint(3, 12):
            docs.append(" ".join(cur))
            cur = []
    if cur:
        docs.append(" ".join(cur))
    return docs


def source_code(n_bytes):
    import site
    roots = [Path(p) for p in site.getsitepackages() if Path(p).is_dir()]
    files = []
    for root in roots:
        for pkg in ("transformers", "tokenizers", "torch/nn", "numpy", "jinja2", "yaml", "requests"):
            d = root / pkg
            if d.is_dir():
                files += sorted(d.rglob("*.py"))
    docs, size = [], 0
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        for i in range(0, len(text), 4000):  # document-sized chunks
            docs.append(text[i:i + 4000])
            size += len(docs[-1].encode())
        if size >= n_bytes:
            break
    return docs


def build_corpus(mb):
    """Returns {"realistic": code + prose texts, "hard": the generator's edge cases}."""
    sys.path.insert(0, str(REPO / "scripts"))
    import gen_tokenizer_corpus

    rng = random.Random(7)
    target = int(mb * 1e6)
    hard = gen_tokenizer_corpus.generate(20000, 1234)
    hard_bytes = sum(len(t.encode()) for t in hard)
    code = source_code(int((target - hard_bytes) * 0.5))
    real = code + prose(rng, target - hard_bytes - sum(len(t.encode()) for t in code))
    rng.shuffle(real)
    return {"realistic": real, "hard": hard}


def write_jsonl(path, texts):
    with open(path, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", default=str(REPO.parent / "shared/data/llama3"))
    build = Path(os.environ.get("SFTGO_BUILD_DIR", REPO / "build"))
    ap.add_argument("--bin", default=str(build / "bin/bench_tokenizer"))
    ap.add_argument("--mb", type=float, default=12.0)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if not Path(args.bin).exists():
        sys.exit(f"no {args.bin}: build the bench_tokenizer target (or pass --bin)")

    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    hf = Tokenizer.from_file(str(Path(args.tokenizer) / "tokenizer.json"))
    print(f"HF load {(time.perf_counter() - t0) * 1000:.0f} ms")
    parts = build_corpus(args.mb)
    parts["all"] = parts["realistic"] + parts["hard"]
    failed = False
    for name, texts in parts.items():
        n_bytes = sum(len(t.encode()) for t in texts)
        best_batch = best_single = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            hf_ids = [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]
            best_batch = min(best_batch, time.perf_counter() - t0)
            t0 = time.perf_counter()
            for t in texts:
                hf.encode(t, add_special_tokens=False)
            best_single = min(best_single, time.perf_counter() - t0)
        with tempfile.TemporaryDirectory() as tmp:
            corpus, out = Path(tmp) / "corpus.jsonl", Path(tmp) / "ids.jsonl"
            write_jsonl(corpus, texts)
            r = subprocess.run([args.bin, "--tokenizer", args.tokenizer, "--corpus", str(corpus), "--out", str(out),
                                "--repeat", str(args.repeat)], capture_output=True, text=True)
            if r.returncode != 0:
                sys.exit(f"bench_tokenizer failed: {r.stderr}")
            ours = json.loads(r.stdout)
            our_ids = [json.loads(line)["ids"] for line in out.read_text().splitlines()]
        bad = [i for i in range(len(texts)) if our_ids[i] != hf_ids[i]]
        if bad:
            failed = True
            i = bad[0]
            print(f"MISMATCH on {len(bad)} texts; first: {texts[i][:200]!r}\n ours {our_ids[i][:30]}\n hf   {hf_ids[i][:30]}")
        mbps = lambda s: n_bytes / s / 1e6  # noqa: E731
        print(f"[{name}] {len(texts)} texts, {n_bytes / 1e6:.2f} MB, {ours['tokens']} tokens, ids equal: {not bad}")
        print(f"  HF encode_batch (1 thread) {mbps(best_batch):.2f} MB/s, HF encode() loop {mbps(best_single):.2f} MB/s")
        print(f"  sftgo encode {ours['mb_per_s']:.2f} MB/s (load {ours['load_ms']:.0f} ms)"
              f"  ratio sftgo/HF-best = {ours['mb_per_s'] / mbps(min(best_batch, best_single)):.2f}x")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
