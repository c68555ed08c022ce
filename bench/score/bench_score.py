#!/usr/bin/env python3
"""`sftgo-train score` on one long text at the Llama-3.2-1B shape: peak RSS and wall time.

  bench_score.py [--bin BIN ...] [--layers 2] [--tokens 9000] [--threads 2] [--work DIR]

Builds (once, in --work) a random-weight Llama with the Llama-3.2-1B dimensions (hidden 2048, 32
heads, 8 KV heads, MLP 8192, tied head, vocabulary 128256, llama3 RoPE scaling) but only --layers
layers, and a JSONL with one text of --tokens random ids. Runs each --bin's `score` on it under
/usr/bin/time -v, each in its own process, and prints peak RSS (max resident set size), wall
time and CPU time (user + system: steadier than wall time on a shared machine). With two or more binaries it checks that they wrote the same log-probs (largest absolute
difference; a different block shape of the LM-head GEMM may change the last bits) before it
prints their ratio. --reference also computes the log-probs with transformers (its final hidden
states, then the tied head and log-softmax in blocks of 512 positions, so the reference itself fits
in memory) and prints each binary's largest difference from them. The weights alone take about 4 bytes x (263M + layers x 61M) parameters.
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SHAPE = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_attention_heads=32,
             num_key_value_heads=8, head_dim=64, rms_norm_eps=1e-5, rope_theta=500000.0,
             max_position_embeddings=131072, tie_word_embeddings=True, bos_token_id=128000,
             eos_token_id=128001,
             rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})


def make_model(out: Path, layers: int) -> Path:
    model_dir = out / f"llama32_1b_shape_{layers}l"
    if (model_dir / "config.json").exists():
        return model_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(num_hidden_layers=layers, **SHAPE)
    model = LlamaForCausalLM(cfg).float().eval()
    model.save_pretrained(model_dir, safe_serialization=True)
    return model_dir


def make_data(out: Path, tokens: int) -> Path:
    path = out / f"text_{tokens}.jsonl"
    rng = random.Random(tokens)
    ids = [128000] + [rng.randrange(128000) for _ in range(tokens - 1)]
    path.write_text(json.dumps({"ids": ids}) + "\n")
    return path


def reference_logprobs(model_dir: Path, data: Path, threads: int) -> list:
    import torch
    from transformers import LlamaForCausalLM
    torch.set_num_threads(threads)
    ids = torch.tensor([json.loads(data.read_text())["ids"]])
    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        h = model.model(ids).last_hidden_state[0, :-1]  # [T-1, H], after the final norm
        w = model.lm_head.weight
        for r0 in range(0, h.shape[0], 512):
            lp = torch.log_softmax(h[r0:r0 + 512] @ w.T, -1)
            out += lp.gather(-1, ids[0, r0 + 1:r0 + 1 + lp.shape[0]].unsqueeze(-1)).squeeze(-1).double().tolist()
    return out


def run(binary: str, model: Path, data: Path, out: Path, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = ["/usr/bin/time", "-v", binary, "score", "--model", str(model), "--data", str(data), "--out", str(out),
           "--device", "cpu"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        sys.exit(f"bench_score.py: {binary} score failed (exit {p.returncode}):\n{p.stderr[-3000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", p.stderr).group(1)
    secs = sum(float(x) * 60 ** i for i, x in enumerate(reversed(wall.split(":"))))
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([0-9.]+)", p.stderr).group(1)) for k in ("User", "System"))
    summary = [l for l in p.stderr.splitlines() if "perplexity" in l]
    return {"bin": binary, "peak_rss_gib": rss_kb / 2**20, "wall_s": secs, "cpu_s": cpu,
            "summary": summary[-1] if summary else ""}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bin", action="append", help="sftgo-train binaries to compare (default: build/bin)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=9000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reference", action="store_true", help="compare with transformers' log-probs")
    ap.add_argument("--work", type=Path, default=Path("/tmp/sftgo_bench_score"))
    a = ap.parse_args()
    bins = a.bin or [str(ROOT / "build/bin/sftgo-train")]
    a.work.mkdir(parents=True, exist_ok=True)
    model, data = make_model(a.work, a.layers), make_data(a.work, a.tokens)
    results, outputs = [], []
    for i, b in enumerate(bins):
        out = a.work / f"scores_{i}.jsonl"
        r = run(b, model, data, out, a.threads)
        results.append(r)
        outputs.append(json.loads(out.read_text().splitlines()[0])["logprobs"])
        print(f"{b}: peak RSS {r['peak_rss_gib']:.2f} GiB, wall {r['wall_s']:.1f} s, CPU {r['cpu_s']:.1f} s  "
              f"({r['summary']})", flush=True)
    if a.reference:
        ref = reference_logprobs(model, data, a.threads)
        for b, lp in zip(bins, outputs):
            print(f"{b} vs transformers: largest |difference| {max(abs(x - y) for x, y in zip(lp, ref)):.3g} "
                  f"over {len(ref)} log-probs", flush=True)
    for i in range(1, len(bins)):
        diff = max(abs(x - y) for x, y in zip(outputs[0], outputs[i]))
        same_len = len(outputs[0]) == len(outputs[i])
        print(f"{bins[i]} vs {bins[0]}: {len(outputs[i])} log-probs, largest |difference| {diff:.3g}"
              f"{'' if same_len else ' (DIFFERENT LENGTHS)'}; peak RSS x{results[i]['peak_rss_gib'] / results[0]['peak_rss_gib']:.3f}, "
              f"wall x{results[i]['wall_s'] / results[0]['wall_s']:.3f}, CPU x{results[i]['cpu_s'] / results[0]['cpu_s']:.3f}")
        if not same_len or diff > 1e-4:  # fp32 log-softmax of ~-12 over 128k logits: GEMM blocking moves ~1e-6
            return 1
    print(json.dumps({"layers": a.layers, "tokens": a.tokens, "threads": a.threads, "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
