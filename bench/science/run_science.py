#!/usr/bin/env python3
"""Science benchmark: plain SFT vs SFT-GO on a tiny Llama, 3 seeds, held-out group losses.

Proposition 1 of the paper (S3.2) says a model trained with the SFT-GO objective has a worst-group
loss no higher than one trained with plain SFT. This benchmark measures that on held-out data:
for each grouping function (tfidf, rho1, random, frequency) it trains SFT-GO (objective sftgo,
lambda 0.9 static, eta = 70th percentile: top 30% important) and compares it with plain SFT
(objective ce) trained on the same data with the same seeds, on

  * demo: data/demo/demo_sft.jsonl (template-made chat examples), 80/20 train / held-out split;
  * rare: a generated set where a rare made-up word carries the answer ("the password of Velmora
    is zorvaquin") and everything else is frequent filler; held-out examples ask about the same
    entities with an unseen phrasing, so only the rare words transfer.

Held-out losses are computed here, not by the trainer, from the saved checkpoints (transformers
forward, per-token cross-entropy at the trained positions), so SFT and SFT-GO runs are scored under
the same groups:
  L_CE = mean over all trained held-out tokens, L_imp / L_unimp = mean over the important / other
  group, worst = max(L_imp, L_unimp) (the quantity of Proposition 1).
Groups on the held-out set: tfidf and frequency use statistics of the TRAINING corpus (the trained
tokens of the training examples, as the trainer fits them; sklearn's smooth-idf / l2-norm TF-IDF and
-ln(count/N)), random is the `random` function's mask from `sftgo-train groups --jsonl`, rho1 is the
top 30% by excess loss (evaluated model minus a reference model, per sequence; the reference is a
plain-SFT model trained with seed 0). Top-k rule as src/grouping: ceil(30% x n) per sequence, ties
to the earlier position.

Usage: nice -n 10 .venv/bin/python bench/science/run_science.py [--out bench/science/results]
       [--seeds 1,2,3] [--datasets demo,rare] [--functions tfidf,rho1,random,frequency] [--epochs N]
Writes OUT/results.json, OUT/summary.md, OUT/curves.png/.svg; runs under OUT/runs (not committed).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import random
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build")) / "bin" / "sftgo-train"
K_PERCENT = 30.0  # eta = 70th percentile

BASE_CONFIG = """\
run: {{name: science, output_dir: runs/science, seed: 1}}
tokenizer: {{path: {tok}}}
model: {{preset: tiny, vocab_size: 1408, hidden_size: 64, intermediate_size: 128, num_layers: 2, num_heads: 4,
        num_kv_heads: 2, dtype: float32, device: cpu}}
data: {{path: {train}, format: chat, template: llama3, max_seq_len: 192, cache_dir: ""}}
grouping: {{function: none, top_k_percent: {k}}}
loss: {{objective: ce, lambda_schedule: static, lambda: 0.9, scope: step}}
optim: {{lr: 3.0e-3, weight_decay: 0.0, schedule: cosine, warmup_ratio: 0.05, grad_clip: 1.0}}
train: {{epochs: {epochs}, global_batch_size: 16, micro_batch_size: 16, log_every: 1, save_every: {save_every},
        keep_last: 100, num_threads: 1}}
"""


# ---- Data ------------------------------------------------------------------------------------------
def split_demo(out: pathlib.Path):
    rows = [l for l in (ROOT / "data/demo/demo_sft.jsonl").read_text().splitlines() if l.strip()]
    rng = random.Random(0)
    rng.shuffle(rows)
    n = len(rows) * 4 // 5
    (out / "train.jsonl").write_text("\n".join(rows[:n]) + "\n")
    (out / "heldout.jsonl").write_text("\n".join(rows[n:]) + "\n")


SYL = ["ka", "lo", "mi", "ra", "ve", "zo", "qui", "tha", "ne", "sor", "bel", "dru", "fen", "gar", "hul", "ix",
       "jor", "kep", "lum", "mor", "nax", "oth", "pry", "quel", "rish", "sut", "tov", "ulm", "vex", "wyn"]
TRAIN_TEMPLATES = [
    ("What is the password of {e}?", "The password of {e} is {w}."),
    ("Tell me the password that {e} uses.", "Sure, the password that {e} uses is {w}."),
    ("Do you know what password {e} has?", "Yes, I know it: {e} has the password {w}."),
    ("I forgot the password of {e}. Can you remind me?", "Of course. The password of {e} is {w}."),
]
HELDOUT_TEMPLATE = ("Which password belongs to {e}?", "The password that belongs to {e} is {w}.")


def make_rare(out: pathlib.Path, n_entities=48):
    rng = random.Random(1)
    ents, words = set(), set()
    while len(ents) < n_entities:
        ents.add("".join(rng.choice(SYL) for _ in range(2)).capitalize() + rng.choice(["ia", "on", "a", "ur"]))
    while len(words) < n_entities:
        words.add("".join(rng.choice(SYL) for _ in range(3)))
    pairs = list(zip(sorted(ents), sorted(words, key=lambda _: rng.random())))

    def conv(q, a):
        return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})
    train = [conv(q.format(e=e), a.format(e=e, w=w)) for e, w in pairs for q, a in TRAIN_TEMPLATES]
    rng.shuffle(train)
    held = [conv(HELDOUT_TEMPLATE[0].format(e=e), HELDOUT_TEMPLATE[1].format(e=e, w=w)) for e, w in pairs]
    (out / "train.jsonl").write_text("\n".join(train) + "\n")
    (out / "heldout.jsonl").write_text("\n".join(held) + "\n")


# ---- Runs --------------------------------------------------------------------------------------------
def sh(args, **kw):
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, **kw)
    if p.returncode != 0:
        sys.exit(f"run_science.py: {' '.join(map(str, args))[:300]}\n{p.stderr[-3000:]}")
    return p


def train(cfg, run_dir: pathlib.Path, sets: list[str]):
    if (run_dir / "DONE").exists():
        return 0.0
    t = time.time()
    sh([BIN, "--config", cfg, "--set", f"run.output_dir={run_dir}", *sum((["--set", s] for s in sets), [])])
    (run_dir / "DONE").touch()
    return time.time() - t


def export_groups(cfg, data_path, function, out):
    sh([BIN, "groups", "--config", cfg, "--set", f"data.path={data_path}", "--set", f"grouping.function={function}",
        "--show", "0", "--jsonl", out])
    return [json.loads(l) for l in pathlib.Path(out).read_text().splitlines()]


def checkpoints(run_dir: pathlib.Path):
    out = []
    for c in sorted((run_dir / "checkpoints").glob("step_*")):
        if (c / "trainer_state.json").exists() and (c / "model.safetensors").exists():
            out.append((int(c.name.split("_")[1]), c))
    return out


# ---- Held-out groups and losses -------------------------------------------------------------------
def top_k(scores, trained, k=K_PERCENT):
    idx = [t for t in range(len(scores)) if trained[t]]
    m = min(len(idx), math.ceil(k / 100.0 * len(idx) - 1e-9)) if idx else 0
    order = sorted(idx, key=lambda t: (-scores[t], t))
    g = [0] * len(scores)
    for t in order[:m]:
        g[t] = 1
    return g


def tfidf_groups(train_rows, held_rows):
    """sklearn TfidfVectorizer(smooth_idf=True, norm='l2') over trained token ids, idf from train."""
    docs = [[i for i, tr in zip(r["ids"], r["trained"]) if tr] for r in train_rows]
    n = len(docs)
    df = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    idf = lambda t: math.log((1 + n) / (1 + df.get(t, 0))) + 1  # noqa: E731
    out = []
    for r in held_rows:
        doc = [i for i, tr in zip(r["ids"], r["trained"]) if tr]
        tf = {}
        for t in doc:
            tf[t] = tf.get(t, 0) + 1
        w = {t: c * idf(t) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in w.values())) or 1.0
        scores = [w[i] / norm if tr else 0.0 for i, tr in zip(r["ids"], r["trained"])]
        out.append(top_k(scores, r["trained"]))
    return out


def frequency_groups(train_rows, held_rows):
    counts, total = {}, 0
    for r in train_rows:
        for i, tr in zip(r["ids"], r["trained"]):
            if tr:
                counts[i] = counts.get(i, 0) + 1
                total += 1
    score = lambda i: -math.log(counts[i] / total) if i in counts else math.log(total + 1)  # noqa: E731
    return [top_k([score(i) if tr else 0.0 for i, tr in zip(r["ids"], r["trained"])], r["trained"])
            for r in held_rows]


class Scorer:
    """Per-token cross-entropy of the held-out trained positions under a checkpoint (transformers)."""

    def __init__(self, rows):
        import torch
        self.torch = torch
        torch.set_num_threads(1)
        self.rows = rows

    def losses(self, ckpt):
        torch = self.torch
        from transformers import LlamaForCausalLM
        model = LlamaForCausalLM.from_pretrained(str(ckpt), torch_dtype=torch.float32).eval()
        out = []
        with torch.no_grad():
            for r in self.rows:
                ids = torch.tensor([r["ids"]])
                logp = torch.log_softmax(model(ids).logits[0].float(), -1)
                # logits at t - 1 predict ids[t] (labels aligned with ids, shifted in the loss)
                nll = [None] + [-float(logp[t - 1, r["ids"][t]]) for t in range(1, len(r["ids"]))]
                out.append([nll[t] if r["trained"][t] and t > 0 else None for t in range(len(r["ids"]))])
        return out


def group_losses(nll, groups):
    s = {0: 0.0, 1: 0.0}
    c = {0: 0, 1: 0}
    for row_nll, row_g in zip(nll, groups):
        for v, g in zip(row_nll, row_g):
            if v is not None:
                s[g] += v
                c[g] += 1
    ce = (s[0] + s[1]) / max(c[0] + c[1], 1)
    imp = s[1] / c[1] if c[1] else float("nan")
    unimp = s[0] / c[0] if c[0] else float("nan")
    return {"ce": ce, "imp": imp, "unimp": unimp, "worst": max(imp, unimp), "n_imp": c[1], "n_unimp": c[0]}


def rho1_groups(nll, ref_nll, held_rows):
    out = []
    for a, b, r in zip(nll, ref_nll, held_rows):
        ex = [(x - y) if (x is not None and y is not None) else 0.0 for x, y in zip(a, b)]
        trained = [1 if x is not None else 0 for x in a]
        out.append(top_k(ex, trained))
    return out


def stats(xs):
    xs = [x for x in xs if not math.isnan(x)]
    m = sum(xs) / len(xs)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, sd


# ---- Main --------------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=ROOT / "bench/science/results")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--datasets", default="demo,rare")
    ap.add_argument("--functions", default="tfidf,rho1,random,frequency")
    ap.add_argument("--epochs", type=float, default=8)
    ap.add_argument("--curve-points", type=int, default=4, help="checkpoints per run scored for the curves")
    a = ap.parse_args()
    if not BIN.exists():
        sys.exit(f"run_science.py: {BIN} not built")
    seeds = [int(s) for s in a.seeds.split(",")]
    fns = a.functions.split(",")
    out = a.out.resolve()
    results = {"config": {"seeds": seeds, "functions": fns, "k_percent": K_PERCENT, "epochs": a.epochs},
               "datasets": {}}
    t_train = 0.0
    t0 = time.time()
    for ds in a.datasets.split(","):
        d = out / "runs" / ds
        d.mkdir(parents=True, exist_ok=True)
        (split_demo if ds == "demo" else make_rare)(d)
        n_train = sum(1 for _ in (d / "train.jsonl").open())
        steps = math.ceil(n_train / 16) * a.epochs
        save_every = max(1, int(steps // a.curve_points))
        cfg = d / "base.yaml"
        cfg.write_text(BASE_CONFIG.format(tok=ROOT / "data/demo/tokenizer", train=d / "train.jsonl", k=K_PERCENT,
                                          epochs=a.epochs, save_every=save_every))
        # Reference model for Rho-1 (plain SFT, seed 0), then SFT and SFT-GO x function, per seed.
        t_train += train(cfg, d / "ref", ["run.seed=0"])
        ref_ckpt = checkpoints(d / "ref")[-1][1]
        runs = {}
        for s in seeds:
            runs[("sft", s)] = d / f"sft_seed{s}"
            t_train += train(cfg, runs[("sft", s)], [f"run.seed={s}"])
            for fn in fns:
                runs[(fn, s)] = d / f"sftgo_{fn}_seed{s}"
                sets = [f"run.seed={s}", "loss.objective=sftgo", f"grouping.function={fn}"]
                if fn == "rho1":
                    sets.append(f"grouping.rho1_reference_model={ref_ckpt}")
                t_train += train(cfg, runs[(fn, s)], sets)
        # Held-out tokens (ids, trained flags) and the static groups.
        train_rows = export_groups(cfg, d / "train.jsonl", "random", d / "train_groups.jsonl")
        held_rows = export_groups(cfg, d / "heldout.jsonl", "random", d / "heldout_random.jsonl")
        static = {"tfidf": tfidf_groups(train_rows, held_rows), "frequency": frequency_groups(train_rows, held_rows),
                  "random": [r["group"] for r in held_rows]}
        scorer = Scorer(held_rows)
        ref_nll = scorer.losses(ref_ckpt)
        per = {}  # (method, fn, seed) -> {"final": {...}, "curve": [(step, {...})]}
        for fn in fns:
            for method in ("sft", "sftgo"):
                for s in seeds:
                    run = runs[("sft", s)] if method == "sft" else runs[(fn, s)]
                    curve = []
                    for step, ck in checkpoints(run):
                        nll = scorer.losses(ck)
                        groups = rho1_groups(nll, ref_nll, held_rows) if fn == "rho1" else static[fn]
                        curve.append((step, group_losses(nll, groups)))
                    per[(method, fn, s)] = {"final": curve[-1][1], "curve": curve}
        table = {}
        for fn in fns:
            for method in ("sft", "sftgo"):
                finals = [per[(method, fn, s)]["final"] for s in seeds]
                table[f"{method}/{fn}"] = {k: stats([f[k] for f in finals]) for k in ("worst", "ce", "imp", "unimp")}
            # Proposition 1 per seed: SFT-GO's held-out worst-group loss <= SFT's (same seed, same groups).
            table[f"prop1/{fn}"] = [per[("sftgo", fn, s)]["final"]["worst"] <= per[("sft", fn, s)]["final"]["worst"]
                                    for s in seeds]
        results["datasets"][ds] = {
            "n_train": n_train, "n_heldout": len(held_rows), "steps": steps, "table": table,
            "curves": {f"{m}/{fn}/{s}": per[(m, fn, s)]["curve"] for (m, fn, s) in per},
        }
    results["seconds"] = {"total": time.time() - t0, "training": t_train}
    (out / "results.json").write_text(json.dumps(rounded(results)))
    (out / "summary.md").write_text(summary(results))
    plot(results, out)
    print((out / "summary.md").read_text())


def rounded(x):
    if isinstance(x, float):
        return round(x, 5)
    if isinstance(x, (list, tuple)):
        return [rounded(v) for v in x]
    if isinstance(x, dict):
        return {k: rounded(v) for k, v in x.items()}
    return x


def summary(res) -> str:
    c = res["config"]
    lines = [f"Held-out losses (nats/token) after {c['epochs']:g} epochs, mean ± std over seeds "
             f"{', '.join(map(str, c['seeds']))}; groups: top {c['k_percent']:g}% per sequence "
             "(eta = 70th percentile).", ""]
    for ds, r in res["datasets"].items():
        lines += [f"**{ds}** ({r['n_train']} training / {r['n_heldout']} held-out examples, {r['steps']:g} steps)", "",
                  "| grouping | method | worst group | L_CE | L_imp | L_unimp | SFT-GO worst <= SFT worst (per seed) |",
                  "|---|---|---|---|---|---|---|"]
        for fn in c["functions"]:
            for m in ("sft", "sftgo"):
                t = r["table"][f"{m}/{fn}"]
                cell = lambda k: f"{t[k][0]:.4f} ± {t[k][1]:.4f}"  # noqa: E731
                p1 = " ".join("yes" if x else "**no**" for x in r["table"][f"prop1/{fn}"]) if m == "sftgo" else ""
                lines.append(f"| {fn} | {'SFT' if m == 'sft' else 'SFT-GO'} | {cell('worst')} | {cell('ce')} | "
                             f"{cell('imp')} | {cell('unimp')} | {p1} |")
        lines.append("")
    s = res["seconds"]
    lines.append(f"Wall time {s['total']:.0f} s (training {s['training']:.0f} s), `nice -n 10`, one LibTorch thread.")
    return "\n".join(lines) + "\n"


def plot(res, out):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fns = res["config"]["functions"]
    dss = list(res["datasets"])
    fig, axes = plt.subplots(len(dss), len(fns), figsize=(3.6 * len(fns), 3.0 * len(dss)), squeeze=False)
    colours = {"ce": "#1f77b4", "imp": "#ff7f0e", "unimp": "#2ca02c"}
    for i, ds in enumerate(dss):
        for j, fn in enumerate(fns):
            ax = axes[i][j]
            for m, style in (("sft", "--"), ("sftgo", "-")):
                for key in ("ce", "imp", "unimp"):
                    curves = [res["datasets"][ds]["curves"][f"{m}/{fn}/{s}"] for s in res["config"]["seeds"]]
                    steps = [p[0] for p in curves[0]]
                    mean = [sum(c[k][1][key] for c in curves) / len(curves) for k in range(len(steps))]
                    ax.plot(steps, mean, ls=style, color=colours[key], lw=1.6)
            ax.set_title(f"{ds} / {fn}", fontsize=10)
            ax.grid(True, color="#e5e5e5")
            if j == 0:
                ax.set_ylabel("held-out loss (nats/token)")
            if i == len(dss) - 1:
                ax.set_xlabel("optimizer step")
    from matplotlib.lines import Line2D
    handles = [Line2D([], [], color=colours["ce"], label="L_CE"), Line2D([], [], color=colours["imp"], label="L_imp"),
               Line2D([], [], color=colours["unimp"], label="L_unimp"),
               Line2D([], [], color="#333", ls="--", label="SFT"), Line2D([], [], color="#333", ls="-", label="SFT-GO")]
    fig.legend(handles=handles, loc="lower center", ncol=5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    for ext in ("png", "svg"):
        fig.savefig(out / f"curves.{ext}", dpi=110)


if __name__ == "__main__":
    main()
