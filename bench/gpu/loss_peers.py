#!/usr/bin/env python3
"""The LM-head loss, forward + backward, as a user would pick it instead of sftgo's fused loss: eager
PyTorch (matmul, fp32 log-softmax cross-entropy), Liger-Kernel's fused linear cross-entropy and Apple's
cut-cross-entropy, on the same inputs; plus a bf16 GEMM probe of the same shapes, which gives the limit
6*T*H*V FLOPs at the measured GEMM rate (forward logits, d hidden and d weight: three T x H x V
matmuls at 2 FLOPs per multiply-add). sftgo's own numbers come from bench_loss in the same call
(scripts/gpu_check.sh puts both in one table).

  bench/gpu/loss_peers.py [--tokens T --hidden H --vocab V] [--device cuda] [--iters N] [--json OUT]
  bench/gpu/loss_peers.py --smoke          # tiny sizes on the CPU: the eager leg and the checks run,
                                           # the Triton legs say why they are skipped

Each variant is checked before it is timed against the same loss computed in fp32 (inputs upcast,
fp32 logits, autograd) on the same device:
loss relative difference <= 2e-2 and the gradients' relative Frobenius error <= 5e-2 (bf16 inputs and
gradients: 8 mantissa bits give ~4e-3 per element; the peers round the logits or their exponentials to
bf16 at different points, and a 128256-way softmax sums ~1e5 such terms). Time: median of the timed
iterations (CUDA events), after one warm-up (Triton compiles there). Memory: peak allocated bytes above
what the inputs hold, gradients included, as bench_loss counts it.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch
import torch.nn.functional as F

LOSS_REL_TOL = 2e-2
GRAD_REL_TOL = 5e-2


def make_inputs(t, h, v, device, dtype, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(t, h, generator=g).to(device, dtype)
    weight = (torch.randn(v, h, generator=g) * (2.0 / h**0.5)).to(device, dtype)
    labels = torch.randint(0, v, (t,), generator=g)
    labels[torch.rand(t, generator=g) < 0.1] = -100  # ~10% ignored, like a prompt (bench_loss does the same)
    return hidden, weight, labels.to(device)


def eager_ce(hidden, weight, labels):
    logits = hidden @ weight.t()  # [T, V] in the input dtype, as a plain model's lm_head
    return F.cross_entropy(logits.float(), labels, ignore_index=-100)


def liger_fn():
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    mod = LigerFusedLinearCrossEntropyLoss(ignore_index=-100)
    return lambda hidden, weight, labels: mod(weight, hidden, labels)


def cce_fn():
    from cut_cross_entropy import linear_cross_entropy

    return lambda hidden, weight, labels: linear_cross_entropy(hidden, weight, labels, ignore_index=-100)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_once(fn, hidden, weight, labels):
    h = hidden.detach().requires_grad_(True)
    w = weight.detach().requires_grad_(True)
    loss = fn(h, w, labels)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30)).item()


def measure(fn, inputs, device, iters, ref):
    """Checks fn against ref (loss, dh, dw), then times it; returns a result dict."""
    hidden, weight, labels = inputs
    loss, dh, dw = run_once(fn, *inputs)  # warm-up (compiles) and the check
    err = {"loss_rel": abs(loss.item() - ref[0].item()) / abs(ref[0].item()),
           "dh_rel": rel(dh, ref[1]), "dw_rel": rel(dw, ref[2])}
    del loss, dh, dw
    ok = err["loss_rel"] <= LOSS_REL_TOL and err["dh_rel"] <= GRAD_REL_TOL and err["dw_rel"] <= GRAD_REL_TOL
    times, peak = [], 0
    for _ in range(iters):
        sync(device)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = run_once(fn, hidden, weight, labels)
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
            peak = max(peak, torch.cuda.max_memory_allocated() - base)
        else:
            t0 = time.perf_counter()
            out = run_once(fn, hidden, weight, labels)
            times.append((time.perf_counter() - t0) * 1e3)
        del out
    return {"ok": ok, **err, "ms": statistics.median(times), "peak_mib": peak / 2**20 if peak else None}


def gemm_probe(t, h, v, device, dtype, iters):
    """bf16 GEMM rate on the loss's own shapes: [T,H] x [H,V] (the forward logits)."""
    a = torch.randn(t, h, device=device, dtype=dtype)
    b = torch.randn(h, v, device=device, dtype=dtype)
    torch.matmul(a, b)
    times = []
    for _ in range(max(iters, 3)):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync(device)
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    return {"tflops": 2 * t * h * v / s / 1e12, "gemm_ms": s * 1e3}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=3072)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--iters", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (fp32): the plumbing only")
    ap.add_argument("--json", help="also write the result here")
    a = ap.parse_args(argv)
    dtype = torch.bfloat16
    if a.smoke:
        a.tokens, a.hidden, a.vocab, a.device, a.iters, dtype = 64, 32, 1000, "cpu", 2, torch.float32
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("loss_peers.py: no CUDA device (use --smoke on a CPU)")
    t, h, v = a.tokens, a.hidden, a.vocab
    res = {"T": t, "H": h, "V": v, "dtype": str(dtype).replace("torch.", ""), "device": a.device,
           "loss_tol": LOSS_REL_TOL, "grad_tol": GRAD_REL_TOL, "variants": {}}
    probe = gemm_probe(t, h, v, a.device, dtype, a.iters)
    res["gemm"] = probe
    res["limit_ms"] = 6 * t * h * v / (probe["tflops"] * 1e12) * 1e3
    inputs = make_inputs(t, h, v, a.device, dtype)
    # The reference: the same loss with fp32 inputs and fp32 logits (independent of every variant's rounding).
    ref = run_once(eager_ce, *(x.float() if x.is_floating_point() else x for x in inputs))
    peers = {"eager CE": lambda: eager_ce, "Liger FLCE": liger_fn, "cut-cross-entropy": cce_fn}
    for name, make in peers.items():
        try:
            fn = make()
        except Exception as e:  # noqa: BLE001 - the row says why
            res["variants"][name] = {"skipped": f"import failed: {type(e).__name__}: {e}"[:200]}
            continue
        if name != "eager CE" and not a.device.startswith("cuda"):
            res["variants"][name] = {"skipped": "no GPU (Triton kernels)"}
            continue
        try:
            r = measure(fn, inputs, a.device, a.iters, ref)
        except Exception as e:  # noqa: BLE001 - a peer's failure is a row, not the end of the bench
            r = {"error": f"{type(e).__name__}: {e}"[:300]}
        if "ms" in r:
            r["limit_ratio"] = res["limit_ms"] / r["ms"]  # share of the GEMM-bound limit reached
        res["variants"][name] = r
        if a.device.startswith("cuda"):
            torch.cuda.empty_cache()
    text = json.dumps(res, indent=1)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    print(text)
    bad = [n for n, r in res["variants"].items() if "error" in r or r.get("ok") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
