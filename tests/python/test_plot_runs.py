"""Group-loss plots: `sftgo-train plot RUN_DIR [RUN_DIR ...]` (SVG) and scripts/plot_runs.py (PNG + SVG).
Several runs on one figure, training and held-out panels, raw + smoothed, 1-2-5 ticks, and the
objective never drawn over L_imp."""
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
PY = str(ROOT / ".venv/bin/python") if (ROOT / ".venv/bin/python").exists() else sys.executable
needs_bin = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def write_run(d: Path, offset: float, steps=40, eval_every=10, cut=True):
    d.mkdir(parents=True)
    lines = []
    for s in range(1, steps + 1):
        ce = 3 * math.exp(-s / 15) + 1 + offset + 0.1 * math.sin(s)
        # lambda = 1 makes the objective equal L_imp: the case where drawing it last hid L_imp.
        lines.append({"step": s, "loss": ce + 0.5, "loss_ce": ce, "loss_imp": ce + 0.5, "loss_unimp": ce - 0.2})
        if s % eval_every == 0:
            lines.append({"step": s, "eval_loss": ce, "eval_loss_ce": ce + 0.1, "eval_loss_imp": ce + 0.6,
                          "eval_loss_unimp": ce})
    text = "".join(json.dumps(l) + "\n" for l in lines)
    if cut:
        text += '{"step": 99, "loss": 2.'  # a writer killed mid-line: skipped, not an error
    (d / "metrics.jsonl").write_text(text)


def svg_polylines(svg):
    return re.findall(r'<polyline fill="none" stroke="(#[0-9a-f]{6})" stroke-width="([0-9.]+)"[^>]*points="([^"]*)"',
                      svg)


@needs_bin
def test_cli_plot_several_runs_train_and_heldout(tmp_path):
    write_run(tmp_path / "sft", 0.0)
    write_run(tmp_path / "sftgo", 0.3)
    out = tmp_path / "cmp.svg"
    p = subprocess.run([str(BIN), "plot", str(tmp_path / "sft"), str(tmp_path / "sftgo"), "-o", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    svg = out.read_text()
    assert "training (per step)" in svg and "held-out (data.eval_path)" in svg
    assert ">sft<" in svg and ">sftgo<" in svg  # legend names the runs
    lines = svg_polylines(svg)
    # 2 runs x 3 series x (raw + smoothed) in the training panel + 2 x 3 held-out lines; no objective.
    assert len(lines) == 2 * 3 * 2 + 2 * 3, len(lines)
    assert "#7f7f7f" not in [c for c, _, _ in lines]
    assert 'stroke-dasharray="7,4"' in svg  # the second run's dash pattern
    # Held-out points: one per eval line (4 per run), at the logged steps.
    assert svg.count("<circle") == 2 * 3 * 4
    # Tick labels of each axis of each panel are multiples of one 1-2-2.5-5 x 10^k step.
    axes = []
    for anchor in ("end", "middle"):
        vals = [float(v) for v in re.findall(rf'text-anchor="{anchor}">(-?[0-9.]+)</text>', svg)]
        for v in vals:  # a panel's ticks increase; the next panel starts again lower
            if not axes or axes[-1][0] != anchor or v <= axes[-1][1][-1]:
                axes.append((anchor, []))
            axes[-1][1].append(v)
    assert len(axes) == 4, axes  # x and y of two panels
    for anchor, vals in axes:
        assert len(vals) >= 3
        step = round(vals[1] - vals[0], 9)
        mant = step / 10 ** math.floor(math.log10(step))
        assert any(abs(mant - m) < 1e-6 for m in (1, 2, 2.5, 5)), (anchor, vals)
        assert all(abs(v / step - round(v / step)) < 1e-6 for v in vals), vals
        assert all(abs(b - a - step) < 1e-6 for a, b in zip(vals, vals[1:])), vals


@needs_bin
def test_cli_plot_smoothing_and_objective_order(tmp_path):
    write_run(tmp_path / "r", 0.0, cut=False)
    p = subprocess.run([str(BIN), "plot", str(tmp_path / "r"), "--objective", "--smooth", "0.8"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    svg = (tmp_path / "r" / "group_losses.svg").read_text()
    lines = svg_polylines(svg)
    colours = [c for c, _, _ in lines]
    # The objective (grey) is drawn before L_imp (orange), so the group curve stays on top.
    assert colours.index("#7f7f7f") < colours.index("#ff7f0e")
    # The smoothed L_CE is the debiased EMA of the raw one: check it point by point (y in pixels is a
    # linear map of the value, so compare the EMA of the raw pixel ys; 0.1 px = the SVG's rounding).
    ce = [pts for c, w, pts in lines if c == "#1f77b4"]
    raw, smooth = ([float(xy.split(",")[1]) for xy in pts.split()] for pts in ce[:2])
    s = w = 0.0
    for r, got in zip(raw, smooth):
        s, w = 0.8 * s + 0.2 * r, 0.8 * w + 0.2
        assert abs(s / w - got) < 0.2
    assert raw != smooth
    # --smooth 0: one line per series.
    p = subprocess.run([str(BIN), "plot", str(tmp_path / "r"), "--smooth", "0", "-o", str(tmp_path / "raw.svg")],
                       capture_output=True, text=True)
    assert p.returncode == 0 and len(svg_polylines((tmp_path / "raw.svg").read_text())) == 3 + 3


@needs_bin
def test_cli_plot_errors(tmp_path):
    write_run(tmp_path / "a", 0.0)
    write_run(tmp_path / "b", 0.0)
    p = subprocess.run([str(BIN), "plot", str(tmp_path / "a"), str(tmp_path / "b")], capture_output=True, text=True)
    assert p.returncode == 2 and "--out" in p.stderr, p.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss_ce": 1}\nnot json\n{"step": 3, "loss_ce": 1}\n')
    p = subprocess.run([str(BIN), "plot", str(bad)], capture_output=True, text=True)
    assert p.returncode == 1 and "metrics.jsonl:2" in p.stderr, p.stderr


def test_plot_runs_py_png_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
    write_run(tmp_path / "sft", 0.0)
    write_run(tmp_path / "sftgo", 0.3)
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(tmp_path / "sft"), str(tmp_path / "sftgo"),
                        "--labels", "SFT,SFT-GO", "--out", str(tmp_path / "fig"), "--objective"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    png = (tmp_path / "fig.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20000
    svg = (tmp_path / "fig.svg").read_text()
    assert "held-out (data.eval_path)" in svg and "SFT-GO" in svg and "optimizer step" in svg
    # One run: written next to its metrics; a bad middle line is an error naming file:line.
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(tmp_path / "sft")], capture_output=True, text=True)
    assert p.returncode == 0 and (tmp_path / "sft" / "group_losses.png").exists(), p.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.jsonl").write_text('{"step": 1, "loss_ce": 1}\nnot json\n{"step": 3, "loss_ce": 1}\n')
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(bad)], capture_output=True, text=True)
    assert p.returncode != 0 and "metrics.jsonl:2" in p.stderr
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(tmp_path / "sft"), "--labels", "a,b"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--labels" in p.stderr
