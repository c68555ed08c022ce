#!/usr/bin/env python3
"""Figure-2-style group-loss plot of one or more runs, as PNG and SVG (matplotlib).

  .venv/bin/python scripts/plot_runs.py RUN_DIR [RUN_DIR ...] [--labels "SFT,SFT-GO"] [--out PREFIX]
      [--smooth 0.6] [--objective] [--title TEXT]

Reads RUN_DIR/metrics.jsonl of each run (training lines and the eval_* lines of data.eval_path) and
draws, per panel (training | held-out, on one step axis from 0), L_CE over all trained tokens (blue),
L_imp over the important group (orange) and L_unimp over the rest (green), the colours of the paper's
Figure 2; one line style per run. Training curves are drawn raw (thin, light) and smoothed (a centred
local linear fit, weight smooth^distance: no lag), bold; held-out points are few and drawn raw with
markers. The title names the method from each run's resolved_config.yaml (loss.objective). The
optimised objective is only drawn with --objective, thin and underneath, and only for runs where it
is a curve of its own (sftgo): for a plain SFT run (ce) it is L_CE itself, for rho1 L_imp, and the
legend says so. Writes PREFIX.png and PREFIX.svg (default: RUN_DIR/group_losses for one run,
group_losses_compare in the working directory for several). `sftgo-train plot` draws the same figure
without Python (-o FIG.png or -o FIG.svg).
"""
from __future__ import annotations

import argparse
import json
import math
import pathlib
import re
import sys

SERIES = [("loss_ce", "", "$L_{CE}$ (all tokens)", "#1f77b4"),
          ("loss_imp", "count_imp", "$L_{imp}$ (important)", "#ff7f0e"),
          ("loss_unimp", "count_unimp", "$L_{unimp}$ (rest)", "#2ca02c")]
STYLES = ["-", "--", ":", "-.", (0, (5, 1, 1, 1, 1, 1))]
METHODS = {"sftgo": "SFT-GO", "ce": "SFT", "rho1": "Rho-1"}


def read_metrics(path: pathlib.Path) -> tuple[dict, dict, list]:
    """(train, eval, objective): series key -> [(step, value)], from one metrics.jsonl, by step."""
    try:
        text = path.read_text()
    except OSError as e:
        sys.exit(f"plot_runs.py: {path}: {e.strerror}")
    lines = text.split("\n")
    train = {k: [] for k, _, _, _ in SERIES}
    ev = {k: [] for k, _, _, _ in SERIES}
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
        for k, count, _, _ in SERIES:
            if not (count and j.get(count) == 0):  # a group with no token in this step has no mean
                take(k, train[k])
            take("eval_" + k, ev[k])
        take("loss", obj)
    for d in (train, ev):
        for pts in d.values():
            pts.sort(key=lambda p: p[0])
    obj.sort(key=lambda p: p[0])
    return train, ev, obj


def read_objective(run: pathlib.Path) -> str:
    """loss.objective from RUN_DIR/resolved_config.yaml, "" when absent or unreadable."""
    path = run / "resolved_config.yaml"
    try:
        text = path.read_text()
    except OSError:
        return ""
    try:
        import yaml
        value = ((yaml.safe_load(text) or {}).get("loss") or {}).get("objective", "")
    except ImportError:  # the file is the trainer's own simple YAML: loss:\n  objective: NAME
        m = re.search(r"^loss:\s*\n(?:[ \t]+.*\n)*?[ \t]+objective:\s*([A-Za-z0-9_]+)", text, re.M)
        value = m.group(1) if m else ""
    except Exception as e:  # noqa: BLE001 - a damaged config must not stop the plot
        print(f"plot_runs.py: warning: {path}: cannot read loss.objective ({e}); the title names no method",
              file=sys.stderr)
        return ""
    return value if value in METHODS else ""


def objective_is(objective: str, obj: list, ce: list) -> str:
    """What the objective curve is: "own", "ce" (L_CE itself), "imp" (L_imp itself) or ""."""
    if not obj:
        return ""
    same = len(obj) == len(ce) and all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-9 * max(1.0, abs(b[1]))
                                       for a, b in zip(obj, ce))
    if objective == "ce" or (not objective and same):
        return "ce"
    return "imp" if objective == "rho1" else "own"


def default_title(objectives: list, labels: list) -> str:
    what = labels[0] if len(labels) == 1 else f"{len(labels)} runs"
    if not all(objectives):
        return f"Losses by token group: {what}"
    methods = list(dict.fromkeys(METHODS[o] for o in objectives))
    if len(methods) == 1:
        return f"{methods[0]} losses by token group: {what}"
    return " vs ".join(methods) + ": losses by token group"


def smooth(points, a):
    """Centred local linear fit, weights a^|x_j - x_i| (as `sftgo-train plot`; no lag, exact on lines)."""
    if a <= 0 or len(points) < 3:
        return points
    import numpy as np
    x = np.array([p[0] for p in points], dtype=float)
    y = np.array([p[1] for p in points], dtype=float)
    # Weights below 1e-12 change nothing visible: a window keeps this O(n * window).
    reach = math.log(1e-12) / math.log(a)
    out = []
    for i in range(len(x)):
        lo, hi = np.searchsorted(x, x[i] - reach), np.searchsorted(x, x[i] + reach, side="right")
        u = x[lo:hi] - x[i]
        w = a ** np.abs(u)
        s0, s1, s2 = w.sum(), (w * u).sum(), (w * u * u).sum()
        t0, t1 = (w * y[lo:hi]).sum(), (w * u * y[lo:hi]).sum()
        det = s0 * s2 - s1 * s1
        out.append((x[i], (s2 * t0 - s1 * t1) / det if det > 1e-12 * s0 * s2 else t0 / s0))
    return out


def nice_axis(lo: float, hi: float, integer: bool) -> tuple[float, float, float]:
    """(lo, hi, step) on a 1-2-2.5-5 x 10^k step, 3-8 intervals, least room beyond the data."""
    if not hi > lo:
        pad = 1.0 if integer else max(abs(lo) * 0.05, 0.5)
        lo, hi = (lo, lo + pad) if integer else (lo - pad, hi + pad)
    span = hi - lo
    p0 = 10 ** (math.floor(math.log10(span / 8)) - 1)
    best, best_score, fallback = None, math.inf, None
    for k in range(4):
        for m in (1, 2, 2.5, 5):
            s = m * p0 * 10 ** k
            if integer and (s < 1 - 1e-9 or abs(s - round(s)) > 1e-9):
                continue
            a, b = math.floor(lo / s + 1e-9) * s, math.ceil(hi / s - 1e-9) * s
            n = round((b - a) / s)
            if fallback is None and n <= 8:
                fallback = (a, b, s)
            if not 3 <= n <= 8:
                continue
            score = (b - a - span) / span + (1e-6 if m == 2.5 else 0)
            if score < best_score - 1e-12 or (score <= best_score + 1e-12 and s > best[2]):
                best, best_score = (a, b, s), score
    return best or fallback


def ticks(axis):
    lo, hi, s = axis
    return [lo + k * s for k in range(round((hi - lo) / s) + 1)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=pathlib.Path)
    ap.add_argument("--labels", help="comma-separated legend names, one per run (default: directory names)")
    ap.add_argument("--out", help="output prefix: writes PREFIX.png and PREFIX.svg")
    ap.add_argument("--smooth", type=float, default=0.6,
                    help="smoothing of the training curves in [0, 1): centred local fit, weight smooth^distance")
    ap.add_argument("--objective", action="store_true", help="also draw the optimised objective (thin, underneath)")
    ap.add_argument("--title", default="", help="figure title (default: the method and the run)")
    ap.add_argument("--dpi", type=int, default=150)
    a = ap.parse_args(argv)
    if not 0 <= a.smooth < 1:
        ap.error(f"--smooth must be in [0, 1), got {a.smooth}")
    labels = [l.strip() for l in a.labels.split(",")] if a.labels else [p.resolve().name for p in a.runs]
    if len(labels) != len(a.runs):
        ap.error(f"--labels names {len(labels)} runs, {len(a.runs)} given")
    data = [read_metrics(r / "metrics.jsonl") for r in a.runs]
    if not any(pts for tr, _, _ in data for pts in tr.values()):
        sys.exit(f"plot_runs.py: {a.runs[0] / 'metrics.jsonl'}: no steps with loss values to plot")
    objectives = [read_objective(r) for r in a.runs]
    obj_is = [objective_is(o, obj, tr["loss_ce"]) for o, (tr, _, obj) in zip(objectives, data)]
    draw(a, data, labels, obj_is, a.title or default_title(objectives, labels))
    return 0


def panel_limits(a, data, obj_is):
    """The shared step axis (from 0) and each panel's loss axis."""
    xs = [p[0] for tr, ev, _ in data for d in (tr, ev) for pts in d.values() for p in pts]
    def loss_axis(i):
        ys = [p[1] for d in data for pts in d[i].values() for p in pts]
        if i == 0 and a.objective:
            ys += [p[1] for (_, _, obj), o in zip(data, obj_is) if o == "own" for p in obj]
        return nice_axis(min(ys), max(ys), False) if ys else None
    return nice_axis(min(0, min(xs)), max(xs), True), loss_axis(0), loss_axis(1)


def draw(a, data, labels, obj_is, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    x_axis, train_axis, eval_axis = panel_limits(a, data, obj_is)
    ncols = 2 if eval_axis else 1
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.4), squeeze=False)
    axes = axes[0]
    for pi, ax in enumerate(axes):
        is_eval = pi == 1
        for r, (tr, ev, obj) in enumerate(data):
            style = STYLES[r % len(STYLES)]
            if not is_eval and a.objective and obj_is[r] == "own":
                x, y = zip(*obj)
                ax.plot(x, y, color="#7f7f7f", lw=0.9, ls=style, alpha=0.8, zorder=1)
            for k, _, _, colour in SERIES:
                pts = (ev if is_eval else tr)[k]
                if not pts:
                    continue
                x, y = zip(*pts)
                if is_eval:
                    ax.plot(x, y, color=colour, lw=1.8, ls=style, marker="o", ms=3.5, zorder=3)
                elif a.smooth > 0:
                    ax.plot(x, y, color=colour, lw=0.8, ls=style, alpha=0.3, zorder=2)
                    sx, sy = zip(*smooth(pts, a.smooth))
                    ax.plot(sx, sy, color=colour, lw=2.0, ls=style, zorder=3)
                else:
                    ax.plot(x, y, color=colour, lw=1.8, ls=style, zorder=3)
        ax.set_title("held-out (data.eval_path)" if is_eval else "training (per step)", fontsize=11, loc="left")
        ax.set_xlabel("optimizer step")
        y_axis = eval_axis if is_eval else train_axis
        ax.set_xlim(x_axis[0], x_axis[1])
        ax.set_xticks(ticks(x_axis), [f"{v:.0f}" for v in ticks(x_axis)])
        ax.set_ylim(y_axis[0], y_axis[1])
        ax.set_yticks(ticks(y_axis))
        ax.grid(True, axis="y", color="#e5e5e5", lw=0.8)
    axes[0].set_ylabel("mean cross-entropy (nats/token)")
    handles = [Line2D([], [], color=c, lw=2, label=l) for _, _, l, c in SERIES]
    notes = []
    if a.objective:
        if "own" in obj_is:
            handles.append(Line2D([], [], color="#7f7f7f", lw=1, label="objective"))
        many = len(data) > 1
        if "ce" in obj_is:
            notes.append("SFT runs: objective = $L_{CE}$" if many else "objective = $L_{CE}$ (SFT)")
        if "imp" in obj_is:
            notes.append("Rho-1 runs: objective = $L_{imp}$" if many else "objective = $L_{imp}$ (Rho-1)")
    if a.smooth > 0:
        notes.append(f"training: light = raw, bold = smoothed {a.smooth:g}")
    handles += [Line2D([], [], color="none", label=n) for n in notes]
    handles += [Line2D([], [], color="#333", lw=1.6, ls=STYLES[r % len(STYLES)], label=labels[r])
                for r in range(len(data))]
    fig.suptitle(title, x=0.02, ha="left", fontsize=12)
    fig.tight_layout()
    # Right of the panels; savefig's tight bounding box widens the figure to hold it.
    right = max(ax.get_position().x1 for ax in axes) + 0.01
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(right, 0.5), frameon=False, fontsize=9,
               handlelength=2.4)
    prefix = pathlib.Path(a.out) if a.out else (a.runs[0] / "group_losses" if len(a.runs) == 1
                                                 else pathlib.Path("group_losses_compare"))
    for ext in ("png", "svg"):
        out = prefix.with_name(prefix.name + "." + ext)
        try:
            fig.savefig(out, dpi=a.dpi, bbox_inches="tight", pad_inches=0.15)
        except OSError as e:
            sys.exit(f"plot_runs.py: --out {out}: {e.strerror}")
        print(out)


if __name__ == "__main__":
    sys.exit(main())
