#!/usr/bin/env python3
"""Writes tests/optim/fixtures/optim_reference.json from the reference libraries:
learning rates from transformers' schedulers, and two AdamW steps from torch.optim.AdamW with
decay / no-decay groups. Run: .venv/bin/python scripts/gen_optim_fixture.py"""
import json
import math
import pathlib

import torch
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup, \
    get_constant_schedule_with_warmup

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests/optim/fixtures/optim_reference.json"


def schedule_rates(factory, peak, warmup, total):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=peak)
    sched = factory(opt, warmup, total) if factory is not get_constant_schedule_with_warmup else factory(opt, warmup)
    rates = []
    for _ in range(total):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def main():
    cases = []
    for name, factory in [("cosine", get_cosine_schedule_with_warmup), ("linear", get_linear_schedule_with_warmup),
                          ("constant", get_constant_schedule_with_warmup)]:
        for warmup, total in [(0, 10), (3, 20), (5, 5)]:
            cases.append({"decay": name, "peak": 2e-5, "warmup": warmup, "total": total,
                          "hf_rates": schedule_rates(factory, 2e-5, warmup, total)})

    torch.manual_seed(0)
    w = torch.randn(4, 3, dtype=torch.float64)
    b = torch.randn(4, dtype=torch.float64)
    grads = [(torch.randn(4, 3, dtype=torch.float64), torch.randn(4, dtype=torch.float64)) for _ in range(2)]
    pw, pb = torch.nn.Parameter(w.clone()), torch.nn.Parameter(b.clone())
    opt = torch.optim.AdamW([{"params": [pw], "weight_decay": 0.1}, {"params": [pb], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    for gw, gb in grads:
        pw.grad, pb.grad = gw.clone(), gb.clone()
        opt.step()
    adamw = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.95, "eps": 1e-8, "weight_decay": 0.1,
             "w0": w.flatten().tolist(), "b0": b.tolist(),
             "grads": [[gw.flatten().tolist(), gb.tolist()] for gw, gb in grads],
             "w2": pw.detach().flatten().tolist(), "b2": pb.detach().tolist()}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"schedules": cases, "adamw": adamw}, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
