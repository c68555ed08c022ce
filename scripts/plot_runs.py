#!/usr/bin/env python3
"""Figure-2-style group-loss plot of one or more runs, as PNG and SVG (matplotlib).

  .venv/bin/python scripts/plot_runs.py RUN_DIR [RUN_DIR ...] [--labels "SFT,SFT-GO"] [--out PREFIX]
      [--smooth 0.6] [--objective] [--title TEXT]

Reads RUN_DIR/metrics.jsonl of each run (training lines and the eval_* lines of data.eval_path) and
draws, per panel (training | held-out), L_CE over all trained tokens (blue), L_imp over the important
group (orange) and L_unimp over the rest (green), the colours of the paper's Figure 2; one line style
per run. Training curves are drawn raw (thin, light) and smoothed (EMA with TensorBoard's debiasing,
bold); held-out points are few and drawn raw with markers. The optimised objective is only drawn
with --objective, thin and underneath, so that it never hides L_imp. Writes PREFIX.png and
PREFIX.svg (default: RUN_DIR/group_losses for one run, group_losses_compare in the working
directory for several). `sftgo-train plot` draws the same figure as SVG without Python.
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys

SERIES = [("loss_ce", "$L_{CE}$ (all tokens)", "#1f77b4"), ("loss_imp", "$L_{imp}$ (important)", "#ff7f0e"),
          ("loss_unimp", "$L_{unimp}$ (rest)", "#2ca02c")]
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]


def read_metrics(path: pathlib.Path) -> tuple[dict, dict, list]:
    """(train, eval, objective): series key -> [(step, value)], from one metrics.jsonl."""
    try:
        text = path.read_text()
    except OSError as e:
        sys.exit(f"plot_runs.py: {path}: {e.strerror}")
    lines = text.split("\n")
    train = {k: [] for k, _, _ in SERIES}
    ev = {k: [] for k, _, _ in SERIES}
    obj = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            j = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # last line without its newline: a writer killed mid-line
                continue
            sys.exit(f"plot_runs.py: {path}:{i + 1}: not a JSON line")
        if not isinstance(j, dict) or not isinstance(j.get("step"), (int, float)):
            sys.exit(f"plot_runs.py: {path}:{i + 1}: expected a JSON object with a numeric \"step\"")
        if j.get("skipped"):
            continue

        def take(key, out):
            v = j.get(key)
            if isinstance(v, (int, float)) and math.isfinite(v):
                out.append((j["step"], float(v)))
        for k, _, _ in SERIES:
            take(k, train[k])
            take("eval_" + k, ev[k])
        take("loss", obj)
    return train, ev, obj


def ema(points, a):
    if a <= 0:
        return points
    out, s, w = [], 0.0, 0.0
    for x, y in points:
        s = a * s + (1 - a) * y
        w = a * w + (1 - a)
        out.append((x, s / w))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=pathlib.Path)
    ap.add_argument("--labels", help="comma-separated legend names, one per run (default: directory names)")
    ap.add_argument("--out", help="output prefix: writes PREFIX.png and PREFIX.svg")
    ap.add_argument("--smooth", type=float, default=0.6, help="EMA weight for training curves in [0, 1); 0 = raw")
    ap.add_argument("--objective", action="store_true", help="also draw the optimised objective (thin, underneath)")
    ap.add_argument("--title", default="")
    ap.add_argument("--dpi", type=int, default=150)
    a = ap.parse_args(argv)
    if not 0 <= a.smooth < 1:
        ap.error(f"--smooth must be in [0, 1), got {a.smooth}")
    labels = a.labels.split(",") if a.labels else [p.resolve().name for p in a.runs]
    if len(labels) != len(a.runs):
        ap.error(f"--labels names {len(labels)} runs, {len(a.runs)} given")
    data = [read_metrics(r / "metrics.jsonl") for r in a.runs]
    if not any(pts for tr, _, _ in data for pts in tr.values()):
        sys.exit(f"plot_runs.py: {a.runs[0] / 'metrics.jsonl'}: no steps with loss values to plot")
    has_eval = any(pts for _, ev, _ in data for pts in ev.values())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    ncols = 2 if has_eval else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols + 2.2, 4.4), squeeze=False)
    axes = axes[0]
    for pi, ax in enumerate(axes):
        is_eval = pi == 1
        for r, (tr, ev, obj) in enumerate(data):
            style = STYLES[r % len(STYLES)]
            if not is_eval and a.objective and obj:
                x, y = zip(*obj)
                ax.plot(x, y, color="#7f7f7f", lw=0.9, ls=style, zorder=1)
            for k, _, colour in SERIES:
                pts = (ev if is_eval else tr)[k]
                if not pts:
                    continue
                x, y = zip(*pts)
                if is_eval:
                    ax.plot(x, y, color=colour, lw=1.8, ls=style, marker="o", ms=3.5, zorder=3)
                elif a.smooth > 0:
                    ax.plot(x, y, color=colour, lw=0.8, ls=style, alpha=0.3, zorder=2)
                    sx, sy = zip(*ema(pts, a.smooth))
                    ax.plot(sx, sy, color=colour, lw=2.0, ls=style, zorder=3)
                else:
                    ax.plot(x, y, color=colour, lw=1.8, ls=style, zorder=3)
        ax.set_title("held-out (data.eval_path)" if is_eval else "training (per step)", fontsize=11, loc="left")
        ax.set_xlabel("optimizer step")
        ax.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True, steps=[1, 2, 2.5, 5, 10]))
        ax.yaxis.set_major_locator(MaxNLocator(nbins=6, steps=[1, 2, 2.5, 5, 10]))
        ax.grid(True, color="#e5e5e5", lw=0.8)
    axes[0].set_ylabel("mean cross-entropy (nats/token)")
    handles = [Line2D([], [], color=c, lw=2, label=l) for _, l, c in SERIES]
    if a.objective:
        handles.append(Line2D([], [], color="#7f7f7f", lw=1, label="objective"))
    if len(data) > 1:
        handles += [Line2D([], [], color="#333", lw=1.6, ls=STYLES[r % len(STYLES)], label=labels[r])
                    for r in range(len(data))]
    note = f"training: light = raw, bold = EMA {a.smooth:g}" if a.smooth > 0 else None
    fig.legend(handles=handles, loc="center right", frameon=False, title=note, title_fontsize=8)
    if a.title or len(data) == 1:
        fig.suptitle(a.title or f"SFT-GO group losses: {labels[0]}", x=0.02, ha="left", fontsize=12)
    fig.tight_layout(rect=(0, 0, 1 - 2.2 / (6.2 * ncols + 2.2), 1))
    prefix = pathlib.Path(a.out) if a.out else (a.runs[0] / "group_losses" if len(a.runs) == 1
                                                 else pathlib.Path("group_losses_compare"))
    for ext in ("png", "svg"):
        out = prefix.with_name(prefix.name + "." + ext)
        try:
            fig.savefig(out, dpi=a.dpi)
        except OSError as e:
            sys.exit(f"plot_runs.py: --out {out}: {e.strerror}")
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
