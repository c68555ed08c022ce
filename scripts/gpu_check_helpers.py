#!/usr/bin/env python3
"""Python half of scripts/gpu_check.sh: versions, tiny reference models, synthetic data, the
transformers side of the score comparison, and log/metrics parsing. Every subcommand prints one JSON
object on stdout (the shell script only reads fields). No network; only torch and transformers.

  env                                   versions and the visible GPU
  make-llama OUT                        tiny random GQA Llama with llama3 rope scaling + ids.jsonl
  score-compare MODEL IDS OURS DEV DT   max |log p ours - log p transformers| on device DEV, dtype DT
  long-data OUT N WORDS                 N chat examples whose answers have WORDS random words
  metrics FILE                          the step lines of a metrics.jsonl (whatever the run's exit code;
                                        a missing file or a cut last line gives the steps there are)
  compare-steps A B LOSS_TOL GN_TOL     per-step loss and grad_norm of two metrics.jsonl, relative
  resume-compare FULL PART FROM TOL     steps after FROM of a resumed run against the uninterrupted run
  groups-compare A B SCORE_TOL MASK_TOL two `sftgo-train groups --jsonl` outputs: scores and masks
  cache-compare A B FUNCTION TOL        the scores of two grouping caches (groups-FUNCTION-*.bin)
  loss-table BENCH_LOG PEERS_JSON       sftgo's bench_loss rows and the Python peers' as one table
  train-ratio SFTGO_METRICS PEER_JSON   tokens/s and peak memory, sftgo / transformers
  summary ROWS ENV SMI OUT_MD OUT_JSON TITLE
                                        summary.md (header: GPU, driver, clocks; the table) and a JSON copy
  parity LOG                            worst rel errors of test_loss's "[gpu parity]" lines, per dtype
  bench LOG                             bench_loss's result rows
"""
import json
import os
import random
import statistics
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
    # Which libstdc++ this python loaded: the kit gives the bundle's libraries to sftgo's binaries only.
    maps = Path("/proc/self/maps")
    libs = {line.split()[-1] for line in maps.read_text().splitlines() if "libstdc++" in line} if maps.exists() else set()
    info["python_libstdcxx"] = sorted(libs)
    info["ld_library_path"] = os.environ.get("LD_LIBRARY_PATH", "")
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


def read_steps(path):
    """The step lines of a metrics.jsonl; a missing file, or a last line cut by a kill, gives what there is."""
    steps = []
    p = Path(path)
    if not p.exists():
        return steps
    for line in p.read_text(errors="replace").splitlines():
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(m, dict) and "step" in m and "loss" in m:
            steps.append(m)
    return steps


def metrics_summary(steps):
    """Medians over the steps after the first (its warm-up and allocator growth), peaks over all."""
    if not steps:
        return {"n": 0, "summary": "no step written"}
    timed = steps[1:] or steps

    def med(key):
        vals = [s[key] for s in timed if isinstance(s.get(key), (int, float))]
        return statistics.median(vals) if vals else None

    def peak(key):
        vals = [s[key] for s in steps if isinstance(s.get(key), (int, float))]
        return max(vals) if vals else None
    r = {"n": len(steps), "last_step": steps[-1]["step"], "step_s": med("step_s"), "tokens_per_s": med("tokens_per_s"),
         "mfu": med("mfu"), "peak_allocated_gb": peak("gpu_mem_allocated_gb"),
         "peak_reserved_gb": peak("gpu_mem_reserved_gb"), "losses": [s.get("loss") for s in steps]}
    parts = [f"{r['n']} steps", f"step {r['step_s']:.2f} s" if r["step_s"] else None,
             f"{r['tokens_per_s']:.0f} tokens/s" if r["tokens_per_s"] else None,
             f"MFU {r['mfu']:.3f}" if r["mfu"] is not None else "MFU n/a",
             f"peak alloc {r['peak_allocated_gb']:.1f} GB" if r["peak_allocated_gb"] is not None else None,
             f"peak reserved {r['peak_reserved_gb']:.1f} GB" if r["peak_reserved_gb"] is not None else None]
    r["summary"] = ", ".join(p for p in parts if p)
    return r


def cmd_metrics(path):
    steps = read_steps(path)
    out({"steps": steps, **metrics_summary(steps)})


def rel(a, b):
    if a is None or b is None:
        return float("inf")
    return abs(a - b) / max(abs(b), 1e-12)


def cmd_compare_steps(a_path, b_path, loss_tol, gn_tol, min_steps="3"):
    a = {s["step"]: s for s in read_steps(a_path)}
    b = {s["step"]: s for s in read_steps(b_path)}
    common = sorted(set(a) & set(b))
    lr = [rel(a[k].get("loss"), b[k].get("loss")) for k in common]
    gr = [rel(a[k].get("grad_norm"), b[k].get("grad_norm")) for k in common]
    ml, mg = max(lr, default=float("inf")), max(gr, default=float("inf"))
    ok = len(common) >= int(min_steps) and ml <= float(loss_tol) and mg <= float(gn_tol)
    text = (f"{len(common)} steps; loss rel max {ml:.1e} (step-by-step {', '.join(f'{x:.1e}' for x in lr)}); "
            f"grad_norm rel max {mg:.1e}")
    out({"ok": ok, "steps": len(common), "max_loss_rel": ml, "max_gn_rel": mg, "text": text})


def cmd_resume_compare(full_path, part_path, from_step, tol):
    full = {s["step"]: s for s in read_steps(full_path)}
    part = {}
    for s in read_steps(part_path):  # the resumed run appends; its lines are the last ones for a step
        part[s["step"]] = s
    after = [k for k in sorted(part) if k > int(from_step) and k in full]
    diffs = [max(rel(part[k]["loss"], full[k]["loss"]), rel(part[k].get("grad_norm"), full[k].get("grad_norm")))
             for k in after]
    worst = max(diffs, default=float("inf"))
    ok = len(after) >= 2 and worst <= float(tol)
    text = f"steps {after}: max rel diff (loss, grad_norm) {worst:.1e}" + (" (bit-identical)" if worst == 0 else "")
    out({"ok": ok, "steps": after, "worst": worst, "text": text})


def cmd_groups_compare(a_path, b_path, score_tol, mask_tol):
    rows_a = [json.loads(l) for l in Path(a_path).read_text().splitlines() if l.strip()]
    rows_b = [json.loads(l) for l in Path(b_path).read_text().splitlines() if l.strip()]
    if len(rows_a) != len(rows_b):
        out({"ok": False, "text": f"{len(rows_a)} vs {len(rows_b)} examples"})
        return
    worst, tokens, flips = 0.0, 0, 0
    for ra, rb in zip(rows_a, rows_b):
        if ra["ids"] != rb["ids"]:
            out({"ok": False, "text": f"example {ra['index']}: different token ids"})
            return
        for sa, sb, ga, gb in zip(ra["score"], rb["score"], ra["group"], rb["group"]):
            if sa is not None and sb is not None:
                worst = max(worst, abs(sa - sb))
                tokens += 1
                flips += ga != gb
    share = flips / max(tokens, 1)
    ok = tokens > 0 and worst <= float(score_tol) and share <= float(mask_tol)
    out({"ok": ok, "worst": worst, "flips": flips, "tokens": tokens,
         "text": f"{tokens} trained tokens: score max abs diff {worst:.1e}, {flips} mask entries differ ({share:.2%})"})


def read_grouping_cache(path):
    """src/grouping/cache.cpp's payload behind src/core/cache_file.cpp's 40-byte envelope."""
    import struct

    raw = Path(path).read_bytes()
    if raw[:8] != b"SFTGOCAC":
        raise ValueError(f"{path}: not an sftgo cache file")
    payload = raw[40:]
    n, tokens = struct.unpack_from("<QQ", payload, 0)
    lens = struct.unpack_from(f"<{n}I", payload, 16)
    if len(payload) != 16 + 4 * n + 5 * tokens:
        raise ValueError(f"{path}: payload of {len(payload)} bytes for {n} examples and {tokens} tokens")
    off = 16 + 4 * n + tokens
    scores = struct.unpack_from(f"<{tokens}f", payload, off)
    return list(lens), list(scores)


def cmd_cache_compare(dir_a, dir_b, function, tol):
    # The merged cache only (groups-FUNCTION-<16 hex digits>.bin), not a shard's part file.
    pat = re.compile(rf"groups-{re.escape(function)}-[0-9a-f]{{16}}\.bin")
    files = [sorted(p for p in Path(d).glob("*.bin") if pat.fullmatch(p.name)) for d in (dir_a, dir_b)]
    if not files[0] or not files[1]:
        out({"ok": False, "text": f"no groups-{function}-*.bin in {dir_a if not files[0] else dir_b}"})
        return
    try:
        (la, sa), (lb, sb) = read_grouping_cache(files[0][-1]), read_grouping_cache(files[1][-1])
    except (ValueError, OSError) as e:
        out({"ok": False, "text": str(e)})
        return
    if la != lb:
        out({"ok": False, "text": "the two caches hold different examples"})
        return
    worst = max((abs(x - y) for x, y in zip(sa, sb)), default=float("inf"))
    out({"ok": worst <= float(tol), "worst": worst,
         "text": f"{len(la)} examples, {len(sa)} tokens: max abs diff {worst:.1e}"})


def add_row(rows_path, name, result, value, bound, note=""):
    """One row of the kit's table (the shell's record() writes the same tab-separated format)."""
    cells = [str(c).replace("\t", " ").replace("\n", " ").replace("|", "/") for c in (name, result, value, bound, note)]
    with open(rows_path, "a") as f:
        f.write("\t".join(cells) + "\n")
    print(f"[gpu_check] {cells[0]:<44} {cells[1]:<22} {cells[2]}", file=sys.stderr)


def bench_rows(log):
    rows, shape = [], None
    text = Path(log).read_text(errors="replace") if Path(log).exists() else ""
    for line in text.splitlines():
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
    return rows, "VALIDATION FAILED" in text


def cmd_loss_table(bench_log, peers_json, rows_path, shape):
    """sftgo's fused loss (bench_loss) and the Python peers on one T x H x V: time and peak memory as
    ratios to eager PyTorch CE, and the share of the 6*T*H*V GEMM-rate limit reached."""
    peers = json.loads(Path(peers_json).read_text()) if Path(peers_json).exists() else {}
    eager = peers.get("variants", {}).get("eager CE", {})
    limit = peers.get("limit_ms")
    bound_peer = (f"checked vs fp32: loss {peers.get('loss_tol', '?')}, grads {peers.get('grad_tol', '?')} rel; "
                  "ratios to eager CE")
    if "gemm" in peers:
        g = peers["gemm"]
        add_row(rows_path, f"loss {shape}: {peers.get('dtype', '')} GEMM probe", "pass",
                f"{g['tflops']:.3g} TFLOP/s; the limit 6 T H V FLOPs at this rate = {limit:.3g} ms",
                "measured in this call", "torch.matmul [T,H] x [H,V]")

    def ratio_text(ms, peak):
        parts = [f"{ms:.2f} ms"]
        if eager.get("ms"):
            parts.append(f"{ms / eager['ms']:.2f}x eager time")
        if peak is not None:
            parts.append(f"peak {peak:.0f} MiB" + (f" = {peak / eager['peak_mib']:.2f}x eager" if eager.get("peak_mib") else ""))
        if limit:
            parts.append(f"{100 * limit / ms:.0f}% of the GEMM limit")
        return "; ".join(parts)
    rows, failed = bench_rows(bench_log)
    for r in rows:
        if r["variant"] == "unfused CE":
            continue
        add_row(rows_path, f"loss {shape}: sftgo {r['variant']}", "FAIL" if failed else "pass",
                ratio_text(r["total_ms"], r["peak_mib"]), "bench_loss validated vs its reference; ratios to eager CE",
                f"{r['vs_unfused']:.2f}x bench_loss's own unfused CE")
    if not rows:
        add_row(rows_path, f"loss {shape}: sftgo fused", "FAIL", "no bench_loss rows", "bench_loss runs", "logs/loss_sftgo.log")
    for name, r in peers.get("variants", {}).items():
        if "skipped" in r:
            add_row(rows_path, f"loss {shape}: {name}", f"skipped ({r['skipped'][:60]})", "-", bound_peer)
        elif "error" in r:
            add_row(rows_path, f"loss {shape}: {name}", "FAIL", r["error"][:160], bound_peer)
        else:
            errs = f"loss {r['loss_rel']:.1e}, dh {r['dh_rel']:.1e}, dW {r['dw_rel']:.1e} vs fp32"
            add_row(rows_path, f"loss {shape}: {name}", "pass" if r["ok"] else "FAIL", ratio_text(r["ms"], r["peak_mib"]),
                    bound_peer, errs)
    if not peers:
        add_row(rows_path, f"loss {shape}: Python peers", "FAIL", "no result", "loss_peers.py runs", "logs/loss_peers.log")


def cmd_train_ratio(sftgo_metrics, peer_json, rows_path, name):
    m = metrics_summary(read_steps(sftgo_metrics))
    p = json.loads(Path(peer_json).read_text()) if Path(peer_json).exists() else {}
    if not m.get("tokens_per_s") or not p.get("tokens_per_s"):
        add_row(rows_path, name, "FAIL", f"sftgo {m.get('summary')}; transformers {'ran' if p else 'no result'}",
                "both sides run", "logs/train_peer.log")
        return
    parts = [f"tokens/s sftgo {m['tokens_per_s']:.0f} / transformers {p['tokens_per_s']:.0f} = "
             f"{m['tokens_per_s'] / p['tokens_per_s']:.2f}x"]
    for key in ("peak_allocated_gb", "peak_reserved_gb"):
        if m.get(key) and p.get(key):
            parts.append(f"{key.split('_')[1]} {m[key]:.1f} / {p[key]:.1f} GB = {m[key] / p[key]:.2f}x")
    add_row(rows_path, name, "pass", "; ".join(parts), "same shape, seq, micro-batch and accumulation; ratios reported",
            f"transformers: fp32 weights + bf16 autocast, checkpointing, Liger loss {p.get('liger_loss')}")


def cmd_summary(rows_path, env_path, smi_path, out_md, out_json, title):
    rows = [l.split("\t") for l in Path(rows_path).read_text().splitlines() if l.strip()] if Path(rows_path).exists() else []
    env = {}
    try:
        env = json.loads(Path(env_path).read_text())
    except (OSError, json.JSONDecodeError):
        pass
    smi = Path(smi_path).read_text().strip() if Path(smi_path).exists() else ""
    n = {k: sum(1 for r in rows if r[1].startswith(k)) for k in ("pass", "FAIL", "skipped")}
    lines = [f"# {title}", "",
             f"{n['pass']} pass, {n['FAIL']} FAIL, {n['skipped']} skipped. Logs: logs.tar.gz (logs/<check>.log).", "",
             "Ran on: " + (env.get("gpu") or "no GPU") + (f" (compute capability {env['capability']})" if env.get("capability") else "")
             + f"; torch {env.get('torch')}, CUDA {env.get('cuda')}, NCCL {env.get('nccl')}, transformers {env.get('transformers')}.", ""]
    if smi:
        lines += ["nvidia-smi (name, driver, clocks.sm / clocks.max.sm / clocks.mem / clocks.max.mem MHz, power limit W, "
                  "temperature C, persistence), at the start and at the end:", "", "```", smi, "```", ""]
    lines += ["| check | result | value | bound | notes |", "|---|---|---|---|---|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in (r + [""] * 5)[:5]) + " |" for r in rows]
    Path(out_md).write_text("\n".join(lines) + "\n")
    Path(out_json).write_text(json.dumps({"title": title, "counts": n, "env": env, "nvidia_smi": smi,
                                          "rows": [dict(zip(("check", "result", "value", "bound", "notes"), r)) for r in rows]},
                                         indent=1) + "\n")
    out(n)


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
    rows, failed = bench_rows(log)
    summary = "; ".join(f"{r['shape']} {r['variant']}: {r['total_ms']:.1f} ms ({r['vs_unfused']:.2f}x), "
                        f"+{r['extra_pct']:.1f}% mem" for r in rows if r["variant"] != "unfused CE")
    out({"rows": rows, "summary": summary, "validation_failed": failed})


def main():
    cmds = {"env": cmd_env, "make-llama": cmd_make_llama, "score-compare": cmd_score_compare,
            "long-data": cmd_long_data, "metrics": cmd_metrics, "parity": cmd_parity, "bench": cmd_bench,
            "compare-steps": cmd_compare_steps, "resume-compare": cmd_resume_compare,
            "groups-compare": cmd_groups_compare, "cache-compare": cmd_cache_compare, "loss-table": cmd_loss_table,
            "train-ratio": cmd_train_ratio, "summary": cmd_summary}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](*sys.argv[2:])


if __name__ == "__main__":
    main()
