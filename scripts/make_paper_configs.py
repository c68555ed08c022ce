#!/usr/bin/env python3
"""Writes the SFT-GO paper's configs: configs/{lima,alpaca}_llama{3b,8b}_{sft,tfidf,llmlingua2,rho1}.yaml
(one per row of Tables 1-2), configs/lima_llama3b_llmlingua2_static.yaml and
configs/lima_llama8b_llmlingua2_decaying.yaml (Table 4's cells that are not Table 1 rows),
configs/{lima,alpaca}_llama{3b,8b}_{sft,tfidf,llmlingua2,rho1}_lora.yaml (each Tables 1-2 row with LoRA
on one GPU: not the paper's setup, see LORA below) and, on request, the eta sweep of Figure 3
(`--eta-sweep 55,70,85,90 --out DIR`).

One generator keeps the files consistent; edit the tables below and re-run it
(`.venv/bin/python scripts/make_paper_configs.py`), never the YAML files by hand.

Every value carries its source. "F.1:309" means Appendix F.1, line 309 of the paper's text as we
have it (../shared/paper/sft-go-arxiv-2506.15021.txt, extracted from arXiv 2506.15021's HTML). In
that text inline maths was lost, so several numbers are BLANK ("a learning rate of ."): those are
marked BLANK below with the value we chose instead and why. docs/reproduce.md has the same table.
tests/python/test_paper_configs.py reads EXPECTED (below) against `sftgo-train config --yaml` of
every generated file.
"""
from __future__ import annotations

import argparse
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAPER_TEXT = "../shared/paper/sft-go-arxiv-2506.15021.txt"

# ---- Per-dataset training protocol ----------------------------------------------------------------
# (value, source). Sources: "S4:100" = Section 4 "Training Details", line 100; F.1/F.2 = Appendix F.
DATASETS = {
    "lima": dict(
        path="data/lima/train.jsonl", fmt="lima", template="llama3",
        epochs=(15, "F.1:305 'we train for 15 epochs'"),
        optimizer=("AdamW", "F.1:305 / S4:100 'AdamW optimizer'"),
        lr=(1.0e-5, "BLANK in F.1:305 and S4:100 ('a learning rate of .'; both say LIMA's recommended "
                    "values): 1e-5 from the LIMA paper (Zhou et al. 2023, sec. 3)"),
        eps=(1.0e-8, "BLANK in F.1:305 ('an epsilon value of .'): 1e-8, the PyTorch/transformers AdamW default"),
        beta2=(0.95, "not in the SFT-GO text; LIMA paper (Zhou et al. 2023, sec. 3): beta2 0.95"),
        weight_decay=(0.1, "F.1:305 'a weight decay of 0.1'"),
        schedule=("cosine", "F.1:305 'a cosine annealing schedule' (S4:100 'cosine decay'; LIMA itself decays linearly)"),
        min_lr_ratio=(0.0, "not in the text: cosine annealing to 0 (our choice)"),
        warmup_ratio=(0.0, "F.1:305 'without any warm-up steps'"),
        batch=(64, "F.1:305 'a batch size of 64'"),
        max_seq_len=(4096, "F.1:305 'a maximum context window size of 4096'"),
    ),
    "alpaca": dict(
        path="data/alpaca/alpaca_data.json", fmt="alpaca", template="alpaca",
        optimizer=("AdamW", "F.2:317 'we use the AdamW optimizer'"),
        eps=(1.0e-8, "BLANK in F.2:317 ('an epsilon value of .'): 1e-8, the PyTorch/transformers AdamW default"),
        beta2=(0.999, "not in the text: the PyTorch AdamW default (our choice)"),
        weight_decay=(0.05, "F.2:318/331 'a weight decay of 0.05' (also S4:100)"),
        schedule=("cosine", "F.2:317 'cosine annealing schedule'"),
        min_lr_ratio=(0.0, "not in the text: cosine annealing to 0 (our choice)"),
        warmup_ratio=(0.07, "F.2:318/331 'a warm-up ratio of 0.07' (also S4:100)"),
        batch=(32, "F.2:317 'a batch size of 32'"),
        max_seq_len=(4096, "F.2:317 'a maximum context window of 4096'"),
    ),
}
EPOCHS_ALPACA = {"3b": (1, "F.2:318 'we train for 1 epoch' (also S4:100)"),
                 "8b": (2, "F.2:331 'we train for 2 epochs' (also S4:100)")}
# Alpaca learning rates were searched per method (F.2:318, F.2:331); every value is BLANK in the text.
LR_ALPACA = (2.0e-5, "BLANK in F.2:321-330 (3B, per method) and F.2:331 (8B, baseline / SFT-GO): "
                     "2e-5, the Alpaca recipe's rate (Taori et al. 2023), for every method")

# Model settings: 3B fits one 80 GB GPU (bf16 weights + fp32 masters, master gradients and AdamW
# state = 18 B/param = 58 GB, activations checkpointed); 8B needs ZeRO-1 over 8 GPUs (docs/reproduce.md, Memory).
MODELS = {
    "3b": dict(preset="llama3.2-3b", path="models/Llama-3.2-3B", micro=4, ranks=1, zero1=False),
    "8b": dict(preset="llama3.1-8b", path="models/Llama-3.1-8B", micro=2, ranks=8, zero1=True),
}

# ---- Grouping rows: eta (a percentile: tokens above it are important) and lambda -------------------
# lambda: ("static", 0.9) or ("decay", max, min) or None (Rho-1: "does not use lambda by construction").
STATIC = ("static", 0.9)
ROWS = {
    ("lima", "3b", "tfidf"): dict(eta=(90, "F.1:309 '90th percentile for Llama-3.2-3B'"),
                                  lam=(STATIC, "F.1:309 'a static value of 0.9 for both models'")),
    ("lima", "8b", "tfidf"): dict(eta=(85, "F.1:309 '85th percentile for Llama-3.1-8B'"),
                                  lam=(STATIC, "F.1:309 'a static value of 0.9 for both models'")),
    ("lima", "3b", "rho1"): dict(eta=(55, "F.1:312 '55th percentile ... for Llama-3.2-3B'"),
                                 lam=(None, "F.1:312 'Rho-1 does not have a tunable lambda'")),
    ("lima", "8b", "rho1"): dict(eta=(70, "F.1:312 '70th percentile for ... Llama-3.1-8B'"),
                                 lam=(None, "F.1:312 'Rho-1 does not have a tunable lambda'")),
    ("lima", "3b", "llmlingua2"): dict(eta=(70, "F.1:315 '70th percentile for both models'"),
                                       lam=(("decay", 0.9, 0.07), "F.1:315 'decaying value from 0.9 to 0.07 for Llama-3.2-3B'")),
    ("lima", "8b", "llmlingua2"): dict(eta=(70, "F.1:315 '70th percentile for both models'"),
                                       lam=(STATIC, "F.1:315 'a static value of 0.9 for Llama-3.1-8B'")),
    ("alpaca", "3b", "tfidf"): dict(eta=(70, "F.2:324 '70th percentile'"), lam=(STATIC, "F.2:324 'static of 0.9'")),
    ("alpaca", "3b", "rho1"): dict(eta=(70, "F.2:327 '70th percentile'"),
                                   lam=(None, "F.2:327 'Rho-1 does not use lambda by construction'")),
    ("alpaca", "3b", "llmlingua2"): dict(eta=(25, "F.2:330 '25th percentile'"),
                                         lam=(STATIC, "F.2:330 'a static value of 0.9'")),
    ("alpaca", "8b", "tfidf"): dict(eta=(60, "F.2:334 '60th percentile'"), lam=(STATIC, "F.2:334 'a static value of 0.9'")),
    ("alpaca", "8b", "rho1"): dict(eta=(40, "F.2:337 '40th percentile'"),
                                   lam=(None, "F.2:337 'Rho-1 does not have a tunable lambda'")),
    ("alpaca", "8b", "llmlingua2"): dict(eta=(25, "F.2:340 '25th percentile'"),
                                         lam=(("decay", 0.9, 0.05), "F.2:340 'decaying value from 0.9 to 0.05'")),
}
# Table 4 (S5.3:175): LLMLingua-2 on LIMA, static vs decaying lambda. One cell of each model is its
# Table 1 row (F.1:315: 3B decaying 0.9 -> 0.07, 8B static 0.9; Table 4's 41.95 / 47.33 are Table 1's
# LLMLingua-2 Avg.), so only the other cell gets a config: 3B static 0.9, and 8B decaying, whose
# lambda_max/lambda_min are BLANK in S5.3:175 ("we set and"): we use F.1:315's 0.9 -> 0.07.
# eta stays at F.1:315's 70th percentile.
TABLE4 = {
    "static": (STATIC, "S5.3:175 Table 4 'Static' cell: 0.9 as F.1:315"),
    "decaying": (("decay", 0.9, 0.07), "S5.3:175 Table 4 'Decaying' cell; BLANK there: 0.9 -> 0.07 as F.1:315 "
                                       "gives for Llama-3.2-3B"),
}
TABLE4_CONFIGS = {"3b": "static", "8b": "decaying"}  # the cell that is not a Table 1 row

# ---- LoRA on one GPU (issue #18): one config per Tables 1-2 row ------------------------------------
# NOT the paper's setup: the paper fine-tunes every weight. These keep the row's data, grouping, eta,
# lambda, epochs, batch size (by gradient accumulation) and AdamW settings; what changes is listed
# here and in every file: the LoRA keys, the learning rate, one GPU with micro-batch 1, and Rho-1's
# reference (the run's own frozen base model, so no second model is held).
LORA = dict(
    rank=(16, "our choice, a common PEFT value"),
    alpha=(32.0, "our choice, a common PEFT value: scale alpha / r = 2"),
    dropout=(0.05, "our choice, a common PEFT value"),
    target_modules=("all-linear", "our choice: q/k/v/o/gate/up/down of every layer (not lm_head)"),
    lr=(2.0e-4, "our choice, a common LoRA rate (the paper gives none: it fine-tunes all weights)"),
    micro=1,  # docs/lora.md's memory table is for micro-batch 1 x 4096 tokens
)
# Per-GPU memory from docs/lora.md ("Memory per GPU", arithmetic, not measured: r 16, all-linear, bf16
# base, seq 4096, micro-batch 1, activation checkpointing): the table's total plus the dropout masks
# of dropout 0.05; the test recomputes it from the doc's formula.
LORA_MEMORY_GIB = {"3b": 11.0, "8b": 21.5}
LORA_FITS = {"3b": "a 12 GB GPU with about 1 GiB to spare", "8b": "a 24 GB GPU with about 2.5 GiB to spare"}

METHODS = {
    "sft": dict(objective="ce", function="none"),
    "tfidf": dict(objective="sftgo", function="tfidf"),
    "llmlingua2": dict(objective="sftgo", function="llmlingua2"),
    # Rho-1's own objective (CE on the selected tokens only), not SFT-GO with a lambda: S3.3 Eq. 9
    # and F.1:312 / F.2:327 ('does not use lambda by construction').
    "rho1": dict(objective="rho1", function="rho1"),
}


def expected(dataset: str, size: str, method: str, variant: str = "", eta_override: float | None = None) -> dict:
    """The resolved values (dotted config keys) a generated config must have; the test checks them."""
    d = DATASETS[dataset]
    epochs = d["epochs"][0] if dataset == "lima" else EPOCHS_ALPACA[size][0]
    lr = d["lr"][0] if dataset == "lima" else LR_ALPACA[0]
    e = {
        "train.epochs": float(epochs), "train.global_batch_size": d["batch"][0],
        "data.max_seq_len": d["max_seq_len"][0], "optim.lr": lr, "optim.eps": d["eps"][0],
        "optim.beta2": d["beta2"][0], "optim.weight_decay": d["weight_decay"][0],
        "optim.schedule": d["schedule"][0], "optim.warmup_ratio": d["warmup_ratio"][0],
        "optim.min_lr_ratio": d["min_lr_ratio"][0], "optim.warmup_steps": -1,
        "loss.objective": METHODS[method]["objective"], "grouping.function": METHODS[method]["function"],
    }
    if method == "sft":
        return e
    row = ROWS[(dataset, size, method)]
    eta = row["eta"][0] if eta_override is None else eta_override
    e["grouping.eta_percentile"] = float(eta)
    e["grouping.top_k_percent"] = 100.0 - eta
    lam = TABLE4[variant][0] if variant else row["lam"][0]
    if lam is not None:
        if lam[0] == "static":
            e["loss.lambda_schedule"], e["loss.lambda"] = "static", lam[1]
        else:
            e["loss.lambda_schedule"], e["loss.lambda_max"], e["loss.lambda_min"] = "linear_decay", lam[1], lam[2]
    return e


def config_name(dataset: str, size: str, method: str, variant: str = "", eta: float | None = None,
                lora: bool = False) -> str:
    name = f"{dataset}_llama{size}_{method}"
    if variant:
        name += f"_{variant}"
    if eta is not None:
        name += f"_eta{eta:g}"
    if lora:
        name += "_lora"
    return name


def render(dataset: str, size: str, method: str, variant: str = "", eta_override: float | None = None,
           config_dir: str = "configs", lora: bool = False) -> str:
    d, m, g = DATASETS[dataset], MODELS[size], METHODS[method]
    if lora:
        assert not variant and eta_override is None, "LoRA configs exist for the Tables 1-2 rows only"
        m = dict(m, micro=LORA["micro"], ranks=1, zero1=False)
    name = config_name(dataset, size, method, variant, eta_override, lora)
    path = f"{config_dir}/{name}.yaml"
    launch = (f"build/bin/sftgo-train --config {path}" if m["ranks"] == 1 else
              f"mpirun -np {m['ranks']} build/bin/sftgo-train --config {path}")
    accum = d["batch"][0] // (m["micro"] * m["ranks"])
    assert accum * m["micro"] * m["ranks"] == d["batch"][0], name
    epochs = d["epochs"] if dataset == "lima" else EPOCHS_ALPACA[size]
    lr = d["lr"] if dataset == "lima" else LR_ALPACA
    what = ("Table 4 (lambda " + variant + ")") if variant else ("Figure 3 eta sweep" if eta_override is not None
                                                                  else "Tables 1-2")
    if lora:
        what += " row with LoRA on one GPU (issue #18)"
    lines = [
        f"# Run: {launch}",
        f"# SFT-GO paper (arXiv 2506.15021), {what}: {'LIMA' if dataset == 'lima' else 'Alpaca'} x "
        f"{m['preset']} x {method}. Generated by scripts/make_paper_configs.py: edit that, not this.",
        "# Sources: 'F.1:309' = Appendix F.1, line 309 of " + PAPER_TEXT + ";",
        "# BLANK = the number is missing from that text (inline maths lost); the value chosen instead is named.",
    ]
    if lora:
        full = config_name(dataset, size, method)
        lines += [
            f"# NOT the paper's setup: the paper fine-tunes every weight (that row is configs/{full}.yaml). This",
            "# keeps its data, grouping, eta, lambda, epochs, batch size and AdamW settings and changes only: the",
            f"# lora section (our choice, PEFT-common values), optim.lr {LORA['lr'][0]:.0e} (our choice), micro-batch",
            f"# {m['micro']} (was {MODELS[size]['micro']})"
            + (f" on one GPU (was {MODELS[size]['ranks']} with ZeRO-1)" if MODELS[size]["ranks"] > 1 else "")
            + (", and the Rho-1 reference: the frozen base model (grouping.rho1_reference_model: base)"
               if method == "rho1" else "") + ".",
            f"# Memory per GPU (docs/lora.md, arithmetic, not measured): about {LORA_MEMORY_GIB[size]} GiB at seq 4096,",
            f"# micro-batch 1, bf16 base, activation checkpointing, dropout masks included: fits {LORA_FITS[size]}.",
        ]
    lines += [
        f"# Prerequisites (docs/reproduce.md): the base model in {m['path']}, the data in {d['path']}"
        + (", the LLMLingua-2 export in models/llmlingua2" if method == "llmlingua2" else "")
        + (f", and the {dataset}_llama{size}_sft run finished (its weights are the Rho-1 reference)"
           if method == "rho1" and not lora else "") + ".",
        f"# {m['ranks']} GPU(s) x micro-batch {m['micro']} x {accum} accumulation steps = batch {d['batch'][0]}.",
        "run:",
        f"  name: {name}",
        f"  output_dir: runs/{name}",
        "  seed: 1234  # scripts/reproduce.sh overrides it per seed (S4:100: five seeds)",
        "",
        "tokenizer:",
        f"  path: {m['path']}",
        "",
        "model:",
        f"  preset: {m['preset']}",
        f"  path: {m['path']}",
        "  dtype: bfloat16",
        "  device: cuda",
        "  activation_checkpointing: true",
        "",
    ]
    if lora:
        lines += [
            "lora:  # our choice (PEFT-common values), not from the paper, which fine-tunes all weights",
            "  enabled: true  # adapters train; every base weight stays frozen in bf16",
            f"  rank: {LORA['rank'][0]}  # {LORA['rank'][1]}",
            f"  alpha: {LORA['alpha'][0]}  # {LORA['alpha'][1]}",
            f"  dropout: {LORA['dropout'][0]}  # {LORA['dropout'][1]}",
            f"  target_modules: {LORA['target_modules'][0]}  # {LORA['target_modules'][1]}",
            "  use_rslora: false",
            "  init: default  # PEFT's: A Kaiming-uniform, B zeros (the model starts equal to the base)",
            "",
        ]
    lines += [
        "data:",
        f"  path: {d['path']}",
        f"  format: {d['fmt']}",
        f"  template: {d['template']}  # our choice: the dataset's own prompt format",
        f"  max_seq_len: {d['max_seq_len'][0]}  # {d['max_seq_len'][1]}",
        "  truncation: truncate",
        "  packing: false",
        "",
        "grouping:",
        f"  function: {g['function']}",
    ]
    if method != "sft":
        row = ROWS[(dataset, size, method)]
        if eta_override is None:
            lines.append(f"  eta_percentile: {row['eta'][0]}  # {row['eta'][1]}: the top {100 - row['eta'][0]}% "
                         "of a sequence's trained tokens are important")
        else:
            lines.append(f"  eta_percentile: {eta_override:g}  # Figure 3 sweep (S5.3:169); the paper's choice is "
                         f"{row['eta'][0]} ({row['eta'][1]})")
    if method == "llmlingua2":
        lines += ["  llmlingua2_model: models/llmlingua2  # scripts/export_llmlingua2.py output",
                  "  llmlingua2_aggregation: max  # our choice: a Llama token takes its most important word's probability"]
    if method == "rho1" and lora:
        lines += ["  rho1_reference_model: base  # LoRA: the run's own frozen base model (adapters off), no second "
                  "model in memory; the full fine-tuning row uses its plain-SFT model instead",
                  "  selection: sequence  # per sequence, as eta is defined in S5.3:169 (Rho-1's own paper "
                  "selects over the batch: grouping.selection: batch)"]
    elif method == "rho1":
        lines += [f"  rho1_reference_model: runs/{dataset}_llama{size}_sft/checkpoints/latest  "
                  "# our choice: the plain-SFT model of the same row (S3.3: a reference trained on data "
                  "from the same domain)",
                  "  selection: sequence  # per sequence, as eta is defined in S5.3:169 (Rho-1's own paper "
                  "selects over the batch: grouping.selection: batch)"]
    lines += ["", "loss:", f"  objective: {g['objective']}"
              + ("  # Rho-1's own objective: CE on the selected tokens only (S3.3 Eq. 9)" if method == "rho1" else
                 "  # Baseline-SFT" if method == "sft" else "")]
    if method != "sft":
        lam, src = TABLE4[variant] if variant else ROWS[(dataset, size, method)]["lam"]
        if lam is None:
            lines.append(f"  # no lambda: {src}")
        elif lam[0] == "static":
            lines += ["  lambda_schedule: static", f"  lambda: {lam[1]}  # {src}"]
        else:
            lines += [f"  lambda_schedule: linear_decay  # {src}", f"  lambda_max: {lam[1]}", f"  lambda_min: {lam[2]}"]
    lines += [
        "  scope: step",
        "",
        "optim:  # " + d["optimizer"][1],
        f"  lr: {LORA['lr'][0]:.1e}  # LoRA: {LORA['lr'][1]}; the full fine-tuning row: {lr[0]:.1e}" if lora else
        f"  lr: {lr[0]:.1e}  # {lr[1]}",
        "  beta1: 0.9  # not in the text: AdamW default",
        f"  beta2: {d['beta2'][0]}  # {d['beta2'][1]}",
        f"  eps: {d['eps'][0]:.1e}  # {d['eps'][1]}",
        f"  weight_decay: {d['weight_decay'][0]}  # {d['weight_decay'][1]}",
        f"  schedule: {d['schedule'][0]}  # {d['schedule'][1]}",
        f"  warmup_ratio: {d['warmup_ratio'][0]}  # {d['warmup_ratio'][1]}",
        f"  min_lr_ratio: {d['min_lr_ratio'][0]}  # {d['min_lr_ratio'][1]}",
        "  grad_clip: 1.0  # not in the text: our choice",
        "",
        "train:",
        f"  epochs: {epochs[0]}  # {epochs[1]}",
        f"  global_batch_size: {d['batch'][0]}  # {d['batch'][1]}",
        f"  micro_batch_size: {m['micro']}",
        "  precision: bf16  # LoRA: bf16 base weights and compute; the fp32 adapters are all the optimizer holds"
        if lora else "  precision: bf16",
        "  log_every: 1",
        "  save_every: 500",
        "  keep_last: 2",
        "",
        "dist:",
        f"  zero1: {'true' if m['zero1'] else 'false'}",
        "",
    ]
    return "\n".join(lines)


def all_configs() -> list[tuple[str, str, str, str]]:
    """(dataset, size, method, variant) of every shipped config: 16 table rows + 2 Table 4 cells."""
    rows = [(d, s, m, "") for d in DATASETS for s in MODELS for m in METHODS]
    rows += [("lima", s, "llmlingua2", v) for s, v in TABLE4_CONFIGS.items()]
    return rows


def lora_configs() -> list[tuple[str, str, str]]:
    """(dataset, size, method) of every LoRA config: one per Tables 1-2 row (16)."""
    return [(d, s, m) for d in DATASETS for s in MODELS for m in METHODS]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "configs"))
    ap.add_argument("--check", action="store_true", help="fail if a file differs from what would be written")
    ap.add_argument("--eta-sweep", metavar="P1,P2,...",
                    help="instead: write the Figure 3 sweep (LIMA x {3b,8b} x {tfidf,rho1,llmlingua2} at each eta "
                         "percentile) to --out (e.g. runs/eta_sweep_configs)")
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    try:
        config_dir = out.resolve().relative_to(ROOT).as_posix()
    except ValueError:
        config_dir = str(out)
    if args.eta_sweep:
        try:
            etas = [float(x) for x in args.eta_sweep.split(",") if x.strip()]
        except ValueError:
            raise SystemExit(f"--eta-sweep '{args.eta_sweep}': expected comma-separated percentiles like 55,70,90")
        bad = [e for e in etas if not 0 < e < 100]
        if not etas or bad:
            raise SystemExit(f"--eta-sweep: percentiles must be in (0, 100), got {args.eta_sweep}")
        out.mkdir(parents=True, exist_ok=True)
        for size in MODELS:
            for method in ("tfidf", "rho1", "llmlingua2"):
                for eta in etas:
                    p = out / f"{config_name('lima', size, method, eta=eta)}.yaml"
                    p.write_text(render("lima", size, method, eta_override=eta, config_dir=config_dir))
                    print(p)
        return
    stale = []
    files = [(config_name(*row), render(*row, config_dir=config_dir)) for row in all_configs()]
    files += [(config_name(*row, lora=True), render(*row, config_dir=config_dir, lora=True))
              for row in lora_configs()]
    for name, text in files:
        p = out / f"{name}.yaml"
        if args.check:
            if not p.exists() or p.read_text() != text:
                stale.append(p.name)
        else:
            p.write_text(text)
    if stale:
        raise SystemExit(f"stale paper configs (re-run scripts/make_paper_configs.py): {', '.join(stale)}")


if __name__ == "__main__":
    main()
