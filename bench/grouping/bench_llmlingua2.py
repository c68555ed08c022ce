#!/usr/bin/env python3
"""LLMLingua-2 scoring speed: our C++ scorer (TorchScript + sentencepiece, build/bin/sftgo_llmlingua2_tool)
against llmlingua 0.2.2's PromptCompressor (HF model + tokenizer) on the same texts, the same random
XLM-R classifier and the same CPU threads, in one run. Validates first (word lists equal, word
probabilities within 1e-4, see below), then times each side's scoring (model loading excluded) and prints
XLM-R pieces/s and the ratio.

Usage: bench_llmlingua2.py [--hidden 768 --layers 12 --heads 12 --intermediate 3072] [--texts 24]
       [--threads 2] [--batch 16]   (defaults: XLM-R base width with random weights)
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
PY = sys.executable


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--intermediate", type=int, default=3072)
    ap.add_argument("--texts", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()

    import torch
    import tiktoken

    torch.set_num_threads(args.threads)
    tiktoken.encoding_for_model = lambda name: None  # no network; unused by the word probabilities
    sys.path.insert(0, str(ROOT / "tests" / "python"))
    from test_grouping_llmlingua2 import _CountingTokenizer
    from llmlingua import PromptCompressor

    responses = []
    for line in (ROOT / "data/demo/demo_sft.jsonl").read_text().splitlines():
        responses += [m["content"] for m in json.loads(line)["messages"] if m["role"] == "assistant"]
    # Texts of ~300-600 pieces: one or two llmlingua windows each.
    texts = [" ".join(responses[(i * 37) % len(responses):][:60]) for i in range(args.texts)]

    with tempfile.TemporaryDirectory() as tmp:
        hf = Path(tmp) / "bench-xlm-roberta-large"
        exp = Path(tmp) / "export"
        subprocess.run([PY, ROOT / "scripts/make_tiny_llmlingua2.py", hf, "--hidden", str(args.hidden), "--layers",
                        str(args.layers), "--heads", str(args.heads), "--intermediate", str(args.intermediate)],
                       check=True, capture_output=True)
        subprocess.run([PY, ROOT / "scripts/export_llmlingua2.py", hf, exp], check=True, capture_output=True)
        inp = Path(tmp) / "texts.jsonl"
        inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))

        pc = PromptCompressor(model_name=str(hf), device_map="cpu", use_llmlingua2=True)
        pc.oai_tokenizer = _CountingTokenizer()
        captured = []
        orig = pc._PromptCompressor__token_prob_to_word_prob

        def spy(token_probs, convert_mode="mean"):
            out = orig(token_probs, convert_mode=convert_mode)
            captured.append([float(p) for p in out])
            return out

        pc._PromptCompressor__token_prob_to_word_prob = spy

        def llmlingua_score():
            captured.clear()
            chunked = [pc._PromptCompressor__chunk_context(t, chunk_end_tokens={".", "\n"}) for t in texts]
            _, words, _ = pc._PromptCompressor__compress(chunked, reduce_rate=0.5, token_to_word="mean",
                                                         force_tokens=[], token_map={}, force_reserve_digit=False,
                                                         drop_consecutive=False)
            return words

        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))

        def ours():
            p = subprocess.run([str(BUILD / "bin/sftgo_llmlingua2_tool"), str(exp), str(inp), "--batch", str(args.batch),
                                "--time", "1"], capture_output=True, text=True, env=env)
            assert p.returncode == 0, p.stderr
            timing = json.loads(p.stderr.strip().splitlines()[-1])
            return [json.loads(l) for l in p.stdout.splitlines()], timing

        # Validate once (also warms both sides up).
        words = llmlingua_score()
        probs = [p for chunk in captured for p in chunk]
        mine, _ = ours()
        assert [w for m in mine for w in m["words"]] == [w for ws in words for w in ws], "word lists differ"
        worst = max(abs(a - b) for a, b in zip([p for m in mine for p in m["probs"]], probs))
        # 1e-4 here (1e-5 in the parity test's 2-layer model): 12 layers of 768-wide fp32 with sdpa
        # (llmlingua) against the exported eager attention, padded to 512 against the batch's longest.
        assert worst <= 1e-4, f"word probabilities differ by {worst:.3g}"

        t0 = time.perf_counter()
        llmlingua_score()
        t_py = time.perf_counter() - t0
        _, timing = ours()
        pieces = timing["pieces"]
        print(json.dumps({
            "model": f"random XLM-R {args.layers} layers, hidden {args.hidden}, heads {args.heads}, ffn {args.intermediate}",
            "texts": len(texts), "pieces": pieces, "threads": args.threads, "batch": args.batch,
            "max_abs_diff": worst,
            "llmlingua_s": round(t_py, 3), "llmlingua_pieces_per_s": round(pieces / t_py, 1),
            "sftgo_s": round(timing["seconds"], 3), "sftgo_pieces_per_s": round(pieces / timing["seconds"], 1),
            "speedup": round(t_py / timing["seconds"], 2)}, indent=1))


if __name__ == "__main__":
    main()
