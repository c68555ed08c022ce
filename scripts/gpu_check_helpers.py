#!/usr/bin/env python3
"""Python half of scripts/gpu_check.sh: versions, tiny reference models, synthetic data, the
transformers side of the score comparison, and log/metrics parsing. Every subcommand prints one JSON
object on stdout (the shell script only reads fields). No network; only torch and transformers.

  env                                   versions and the visible GPU
  make-llama OUT                        tiny random GQA Llama with llama3 rope scaling + ids.jsonl
  score-compare MODEL IDS OURS DEV DT   max |log p ours - log p transformers| on device DEV, dtype DT
  long-data OUT N WORDS                 N chat examples whose answers have WORDS random words
  metrics FILE                          the step lines of a metrics.jsonl
  parity LOG                            worst rel errors of test_loss's "[gpu parity]" lines, per dtype
  bench LOG                             bench_loss's result rows
"""
import json
import random
import re
import sys
from pathlib import Path


def out(obj):
    print(json.dumps(obj))


def cmd_env():
    import torch

    info = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available()}
    try:
        info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        info["nccl"] = f"unavailable ({e})"
    info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(gpu=p.name, gpu_count=torch.cuda.device_count(), gpu_mem_gib=round(p.total_memory / 2**30, 1),
                    capability=f"{p.major}.{p.minor}")
    try:
        import transformers
        info["transformers"] = transformers.__version__
    except ImportError:
        info["transformers"] = None
    out(info)


def cmd_make_llama(dst):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a wider logit spread than the default init, so differences show
        model.lm_head.weight.mul_(8.0)
    dst = Path(dst)
    model.save_pretrained(dst / "model")
    rng = random.Random(1)
    # Longer than original_max_position_embeddings (32), so the llama3 scaling matters.
    seqs = [[rng.randrange(3, 512) for _ in range(n)] for n in (80, 47, 9)]
    (dst / "ids.jsonl").write_text("".join(json.dumps({"ids": s}) + "\n" for s in seqs))
    out({"model": str(dst / "model"), "ids": str(dst / "ids.jsonl")})


def cmd_score_compare(model_dir, ids_path, ours_path, device, dtype):
    import torch
    from transformers import AutoModelForCausalLM

    dt = {"float32": torch.float32, "bfloat16": torch.bfloat16}[dtype]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dt, attn_implementation="eager").to(device).eval()
    seqs = [json.loads(l)["ids"] for l in Path(ids_path).read_text().splitlines()]
    ours = [json.loads(l)["logprobs"] for l in Path(ours_path).read_text().splitlines()]
    worst = 0.0
    for seq, lp in zip(seqs, ours, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([seq], device=device)).logits[0].double()
        ref = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(seq[1:], device=device)[:, None])[:, 0]
        if len(lp) != len(ref):
            out({"error": f"{len(lp)} log-probs for a sequence of {len(seq)}"})
            return
        worst = max(worst, max(abs(a - b) for a, b in zip(lp, ref.cpu().tolist())))
    out({"max_abs_diff": worst, "text": f"{worst:.2e}", "sequences": len(seqs)})


def cmd_long_data(dst, n, words):
    rng = random.Random(7)
    vocab = ("the of and to in is was for on that with as by at from his her they this which be or are an "
             "model data token group loss train step value learn small large first second under over").split()
    lines = []
    for i in range(int(n)):
        answer = " ".join(rng.choice(vocab) for _ in range(int(words)))
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Write text number {i}."},
                                              {"role": "assistant", "content": answer}]}))
    Path(dst).write_text("\n".join(lines) + "\n")
    out({"path": str(dst), "examples": int(n)})


def cmd_metrics(path):
    steps = []
    for line in Path(path).read_text().splitlines():
        m = json.loads(line)
        if "step" in m and "loss" in m:
            steps.append(m)
    summary = ""
    if steps:
        last = steps[-1]
        summary = (f"step {last.get('step_s', 0):.2f} s, {last.get('tokens_per_s', 0):.0f} tokens/s, "
                   f"MFU {last.get('mfu') or 0:.3f}")
        extra = [f"{k} {v}" for k, v in last.items() if "mem" in k or "gpu" in k]
        summary += "".join(", " + e for e in extra)
    out({"steps": steps, "summary": summary})


def cmd_parity(log):
    worst = {}
    for line in Path(log).read_text(errors="replace").splitlines():
        m = re.search(r"\[gpu parity\]\s+(.*?)\s+rel\(loss\)=(\S+) rel\(dh\)=(\S+) rel\(dW\)=(\S+)", line)
        if not m:
            continue
        key = "bf16" if "bf16" in m.group(1) else "fp32"
        worst[key] = max(worst.get(key, 0.0), *(float(m.group(i)) for i in (2, 3, 4)))
    out(worst)


def cmd_bench(log):
    rows, shape = [], None
    for line in Path(log).read_text(errors="replace").splitlines():
        m = re.match(r"T=(\d+) H=(\d+) V=(\d+)", line.strip())
        if m:
            shape = "T={} H={} V={}".format(*m.groups())
            continue
        # "  %-17s %10.1f ..." : the variant name (it has spaces) in the first 19 columns, then 9 fields.
        name, parts = line[2:19].strip(), line[19:].split()
        if shape and name and len(parts) == 9 and parts[3].endswith("x"):
            try:
                rows.append({"shape": shape, "variant": name, "total_ms": float(parts[2]),
                             "vs_unfused": float(parts[3].rstrip("x")), "peak_mib": float(parts[4]),
                             "extra_pct": float(parts[6].rstrip("%"))})
            except ValueError:
                pass
    summary = "; ".join(f"{r['shape']} {r['variant']}: {r['total_ms']:.1f} ms ({r['vs_unfused']:.2f}x), "
                        f"+{r['extra_pct']:.1f}% mem" for r in rows if r["variant"] != "unfused CE")
    out({"rows": rows, "summary": summary, "validation_failed": "VALIDATION FAILED" in Path(log).read_text(errors="replace")})


def main():
    cmds = {"env": cmd_env, "make-llama": cmd_make_llama, "score-compare": cmd_score_compare,
            "long-data": cmd_long_data, "metrics": cmd_metrics, "parity": cmd_parity, "bench": cmd_bench}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
