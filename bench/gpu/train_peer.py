#!/usr/bin/env python3
"""One training job of a Llama shape in a plain transformers + PyTorch loop, the peer of sftgo's
3B-shaped run in scripts/gpu_check.sh: LlamaForCausalLM from its config (random init, made on the
device), fp32 weights under bf16 autocast (what the Hugging Face Trainer's bf16=True does), gradient
checkpointing, fused AdamW, gradient clipping at 1.0, and Liger-Kernel's fused linear cross-entropy on
the final hidden states where it imports (else the model's own cross-entropy on full logits). The
sftgo side trains bf16 weights with fp32 masters and the SFT-GO loss (TF-IDF groups); the group means
cost ~1% of a step, so the comparison is the trainer, not the objective.

  bench/gpu/train_peer.py [--preset llama3.2-3b] [--seq 4096] [--micro 2] [--accum 4] [--steps 3] [--json OUT]
  bench/gpu/train_peer.py --smoke     # a tiny Llama on the CPU in fp32: the loop and the report only

Tokens/s counts every token of the optimizer steps after the first (warm-up, allocator growth);
peak memory is torch.cuda's peak allocated / reserved over the whole run, in GB (1e9 bytes, as
sftgo's metrics.jsonl).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time

import torch

PRESETS = {  # hidden, intermediate, layers, heads, kv heads, tied embeddings (src/model/config.cpp)
    "llama3.2-3b": (3072, 8192, 28, 24, 8, True),
    "llama3.1-8b": (4096, 14336, 32, 32, 8, False),
    "smoke": (64, 128, 2, 4, 2, True),
}


def build_model(preset, vocab, device):
    from transformers import LlamaConfig, LlamaForCausalLM

    h, i, layers, heads, kv, tied = PRESETS[preset]
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=h, intermediate_size=i, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=131072,
                      rope_theta=500000.0, tie_word_embeddings=tied, rms_norm_eps=1e-5,
                      attn_implementation="sdpa")
    with torch.device(device):  # initialise on the device: a CPU init of 3B weights takes minutes
        model = LlamaForCausalLM(cfg)
    return model


def loss_fn(model, use_liger):
    if use_liger:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        flce = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)

        def liger(ids, labels):
            hidden = model.model(input_ids=ids).last_hidden_state[:, :-1].reshape(-1, model.config.hidden_size)
            return flce(model.lm_head.weight, hidden, labels[:, 1:].reshape(-1))
        return liger
    return lambda ids, labels: model(input_ids=ids, labels=labels).loss


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="llama3.2-3b", choices=[p for p in PRESETS if p != "smoke"])
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--micro", type=int, default=2)
    ap.add_argument("--accum", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--no-liger", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args(argv)
    device = "cuda"
    if a.smoke:
        a.preset, a.vocab, a.seq, a.micro, a.accum, a.steps, device = "smoke", 512, 64, 2, 2, 3, "cpu"
    elif not torch.cuda.is_available():
        sys.exit("train_peer.py: no CUDA device (use --smoke on a CPU)")
    torch.manual_seed(0)
    model = build_model(a.preset, a.vocab, device)
    model.gradient_checkpointing_enable()
    model.config.use_cache = False
    model.train()
    use_liger, liger_note = False, "off (--no-liger)"
    if not a.no_liger:
        try:
            import liger_kernel.transformers  # noqa: F401
            use_liger, liger_note = device == "cuda", "on" if device == "cuda" else "skipped (no GPU)"
        except Exception as e:  # noqa: BLE001 - reported in the result
            liger_note = f"import failed ({type(e).__name__})"
    compute = loss_fn(model, use_liger)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=device == "cuda")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()
    g = torch.Generator(device="cpu").manual_seed(1)
    times, losses = [], []
    for step in range(a.steps):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(a.accum):
            ids = torch.randint(0, a.vocab, (a.micro, a.seq), generator=g).to(device)
            with autocast:
                loss = compute(ids, ids) / a.accum
            loss.backward()
            losses.append(loss.item() * a.accum)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    tokens = a.micro * a.seq * a.accum
    timed = times[1:] or times
    res = {"preset": a.preset, "seq": a.seq, "micro": a.micro, "accum": a.accum, "steps": a.steps,
           "params": sum(p.numel() for p in model.parameters()), "liger_loss": liger_note,
           "step_s": times, "tokens_per_step": tokens, "tokens_per_s": tokens * len(timed) / sum(timed),
           "first_loss": losses[0], "last_loss": losses[-1]}
    if device == "cuda":
        res["peak_allocated_gb"] = torch.cuda.max_memory_allocated() / 1e9
        res["peak_reserved_gb"] = torch.cuda.max_memory_reserved() / 1e9
    text = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
