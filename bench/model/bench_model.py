#!/usr/bin/env python3
"""Side-by-side model benchmark: sftgo (C++ LibTorch) vs transformers + PyTorch, same torch build,
same thread count, same config and batch, each in its own process (so peak RSS is per impl).

  bench_model.py [--build DIR] [--threads N] [--batch B] [--seq S] [--steps K] [--load-gb G]

1. forward+backward tokens/s and peak RSS of a small Llama on CPU (fp32, SDPA attention).
2. a synthetic sharded fp32 checkpoint of about G GB: load time and peak RSS of ours (should be
   ~1x the weights) next to transformers.from_pretrained.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIG = dict(vocab_size=8192, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
              num_attention_heads=8, num_key_value_heads=4, head_dim=32, rms_norm_eps=1e-5,
              rope_theta=500000.0, max_position_embeddings=2048, tie_word_embeddings=False,
              rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 256})


def peak_rss_mb():
    # VmHWM rather than ru_maxrss, which survives fork+exec (children would report the driver's peak).
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def hf_train(b, s, steps, threads):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**CONFIG, attn_implementation="sdpa")).float()
    ids = torch.randint(0, CONFIG["vocab_size"], (b, s))

    def step():
        logits = model(input_ids=ids).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, CONFIG["vocab_size"]),
                                                 ids[:, 1:].reshape(-1))
        loss.backward()
        model.zero_grad(set_to_none=False)

    step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sec = time.perf_counter() - t0
    print(json.dumps({"impl": "transformers", "tokens_per_s": b * s * steps / sec, "peak_rss_mb": peak_rss_mb(),
                      "sec_per_step": sec / steps}))


def hf_load(path):
    import torch
    from transformers import AutoModelForCausalLM
    before = peak_rss_mb()
    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    sec = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    print(json.dumps({"impl": "transformers", "load_s": sec, "weights_mb": weights, "rss_before_mb": before,
                      "peak_rss_mb": peak_rss_mb()}))


def make_checkpoint(path: Path, gb: float):
    """Random fp32 Llama with hidden 1024 and enough layers for ~gb GB, in 400 MB shards."""
    import torch
    from safetensors.torch import save_file
    h, inter, vocab, heads, kv = 1024, 2816, 32000, 16, 8
    per_layer = h * h * 2 + 2 * h * (h // 2) + 3 * h * inter + 2 * h
    layers = max(1, int((gb * 2**30 / 4 - 2 * vocab * h) // per_layer))
    cfg = dict(CONFIG, vocab_size=vocab, hidden_size=h, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=heads, num_key_value_heads=kv, head_dim=h // heads, architectures=["LlamaForCausalLM"],
               model_type="llama", hidden_act="silu", torch_dtype="float32")
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps(cfg))
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({p + "self_attn.q_proj.weight": (h, h), p + "self_attn.k_proj.weight": (h // 2, h),
                       p + "self_attn.v_proj.weight": (h // 2, h), p + "self_attn.o_proj.weight": (h, h),
                       p + "mlp.gate_proj.weight": (inter, h), p + "mlp.up_proj.weight": (inter, h),
                       p + "mlp.down_proj.weight": (h, inter), p + "input_layernorm.weight": (h,),
                       p + "post_attention_layernorm.weight": (h,)})
    shards, cur, size = [], {}, 0
    for name, shape in shapes.items():
        n = 4
        for d in shape:
            n *= d
        if cur and size + n > 400 * 2**20:
            shards.append(cur)
            cur, size = {}, 0
        cur[name] = shape
        size += n
    shards.append(cur)
    weight_map, total = {}, 0
    g = torch.Generator().manual_seed(0)
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.randn(s, generator=g) * 0.02 for n, s in shard.items()}
        save_file(tensors, str(path / fname), metadata={"format": "pt"})
        for n, t in tensors.items():
            weight_map[n] = fname
            total += t.numel() * 4
        del tensors
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                   "weight_map": weight_map}))
    return total


def run_json(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--load-gb", type=float, default=1.5)
    ap.add_argument("--child", nargs="*")
    a = ap.parse_args()
    if a.child:
        if a.child[0] == "train":
            hf_train(*map(int, a.child[1:5]))
        else:
            hf_load(a.child[1])
        return
    binary = str(Path(a.build) / "bin" / "bench_model")
    env_cmd = [sys.executable, __file__, "--child"]
    print(f"== forward+backward, fp32 CPU, B={a.batch} S={a.seq} threads={a.threads} steps={a.steps}")
    ours = run_json([binary, "train", str(a.batch), str(a.seq), str(a.steps), str(a.threads)])
    theirs = run_json(env_cmd + ["train", str(a.batch), str(a.seq), str(a.steps), str(a.threads)])
    for r in (ours, theirs):
        print(f"  {r['impl']:13s} {r['tokens_per_s']:9.0f} tok/s  {r['sec_per_step']*1e3:8.1f} ms/step  "
              f"peak RSS {r['peak_rss_mb']:7.0f} MB")
    print(f"  speed ratio sftgo/transformers: {ours['tokens_per_s'] / theirs['tokens_per_s']:.2f}x, "
          f"RSS ratio {ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}x")
    if a.load_gb > 0:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as d:
            total = make_checkpoint(Path(d), a.load_gb)
            print(f"== load of a synthetic sharded fp32 checkpoint, {total / 2**30:.2f} GiB")
            for r in (run_json([binary, "load", d]), run_json(env_cmd + ["load", d])):
                print(f"  {r['impl']:13s} {r['load_s']:6.2f} s  weights {r['weights_mb']:7.0f} MB  "
                      f"peak RSS {r['peak_rss_mb']:7.0f} MB (before load {r['rss_before_mb']:.0f} MB) -> "
                      f"{(r['peak_rss_mb'] - r['rss_before_mb']) / r['weights_mb']:.2f}x weights")


if __name__ == "__main__":
    main()
