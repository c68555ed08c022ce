#!/usr/bin/env python3
"""Builds tiny random Llama checkpoints with HF transformers and dumps reference outputs.

For each case (GQA ratio 1/2/4, tied/untied, with/without llama3 rope_scaling, sequences longer
than original_max_position_embeddings) writes OUT/<case>/model/ (config.json + model.safetensors,
saved by transformers) and OUT/<case>/ref.safetensors holding:
  ids [B,S] (int64), logits [B,S,V] (fp32), loss [] (mean CE of next-token prediction),
  grad.<hf name> (fp32 gradient of loss per parameter), logits_bf16 [B,S,V] (model cast to bf16),
  gen_prompt [P], gen_greedy [P+N] (transformers greedy generate, eos disabled).
Seeded: the same command gives the same files. Usage: make_tiny_llama.py OUT_DIR
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 256
CASES = {
    # name: (heads, kv_heads, tied, rope_scaling, seq_len)
    "mha_untied_rope3": (4, 4, False, True, 48),
    "gqa2_tied_rope3": (4, 2, True, True, 48),
    "gqa4_untied_plain": (4, 1, False, False, 24),
    "gqa4_tied_rope3": (8, 2, True, True, 40),
    "gqa2_untied_plain": (4, 2, False, False, 33),
}


def make_case(out: Path, name: str, heads: int, kv: int, tied: bool, rope3: bool, seq: int, seed: int):
    torch.manual_seed(seed)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16} if rope3 else None
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=heads, num_key_value_heads=kv, head_dim=64 // heads,
                      rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=rope, max_position_embeddings=128,
                      tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2,
                      attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).float().eval()
    # Default init leaves norms at 1; randomise them so the norm weights are really tested.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    d = out / name
    model.save_pretrained(d / "model", safe_serialization=True)

    ids = torch.randint(0, VOCAB, (2, seq), generator=torch.Generator().manual_seed(seed + 1))
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, VOCAB).float(), ids[:, 1:].reshape(-1))
    loss.backward()
    ref = {"ids": ids, "logits": logits.detach().float().contiguous(), "loss": loss.detach().reshape(())}
    for n, p in model.named_parameters():
        ref["grad." + n] = p.grad.detach().float().contiguous()
    with torch.no_grad():
        ref["logits_bf16"] = model.to(torch.bfloat16)(input_ids=ids).logits.float().contiguous()
        model.float()
        prompt = ids[0, :5].clone()
        gen = model.generate(prompt[None], max_new_tokens=12, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=12)
    ref["gen_prompt"] = prompt.contiguous()
    ref["gen_greedy"] = gen[0].contiguous()
    save_file(ref, str(d / "ref.safetensors"))
    (d / "case.json").write_text(json.dumps({"heads": heads, "kv_heads": kv, "tied": tied, "rope3": rope3,
                                             "seq": seq}))


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_llama_fixtures")
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, spec) in enumerate(CASES.items()):
        make_case(out, name, *spec, seed=1234 + 17 * i)
    (out / "DONE").write_text("\n".join(CASES) + "\n")
    print(f"wrote {len(CASES)} cases to {out}")


if __name__ == "__main__":
    main()
