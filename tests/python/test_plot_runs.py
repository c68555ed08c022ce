"""Group-loss plots: `sftgo-train plot RUN_DIR [RUN_DIR ...]` (SVG or PNG) and scripts/plot_runs.py
(PNG + SVG). Several runs on one figure, training and held-out panels on one step axis, raw +
smoothed, 1-2-5 ticks, the objective never drawn over L_imp (nor over L_CE for SFT), and real runs
rendered and read back as a reader sees them: title, legend, tick labels, the PNG's pixels."""
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
    # The smoothed L_CE is the centred local linear fit of the raw one, weights 0.8^|step distance|,
    # computed here directly at each point (the value-to-pixel map is affine and a least-squares line
    # commutes with it, so fit the raw pixel ys; 0.2 px = both curves' 0.1 px rounding in the SVG).
    n = len(raw)
    for i in range(n):
        w = [0.8 ** abs(j - i) for j in range(n)]
        s0, s1, s2 = sum(w), sum(wj * (j - i) for j, wj in enumerate(w)), sum(wj * (j - i) ** 2 for j, wj in enumerate(w))
        t0, t1 = sum(wj * raw[j] for j, wj in enumerate(w)), sum(wj * (j - i) * raw[j] for j, wj in enumerate(w))
        assert abs((s2 * t0 - s1 * t1) / (s0 * s2 - s1 * s1) - smooth[i]) < 0.2, i
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


# ---- Real runs, read back as a reader sees the figure -------------------------------------------

DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
STEPS = 69  # the demo's length: the axis must end at 70, not 80


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Two tiny real runs of 69 steps (SFT-GO and plain SFT), held-out loss every 10 steps."""
    if not BIN.exists():
        pytest.skip(f"{BIN} not built")
    tmp = tmp_path_factory.mktemp("plot_real")
    held_out = tmp / "held_out.jsonl"
    held_out.write_text("".join((ROOT / "data/demo/demo_sft.jsonl").read_text().splitlines(True)[:40]))
    runs = {}
    for objective in ("sftgo", "ce"):
        d = tmp / f"run_{objective}"
        args = ["--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
                "--set", "model.vocab_size=1408", "--set", "model.hidden_size=32",
                "--set", "model.intermediate_size=64", "--set", "model.num_layers=2",
                "--set", f"run.output_dir={d}", "--set", f"train.max_steps={STEPS}", "--set", "data.cache_dir=",
                "--set", "model.device=cpu", "--set", "train.num_threads=1", "--set", f"loss.objective={objective}",
                "--set", f"data.eval_path={held_out}", "--set", "train.eval_every=10"]
        p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, p.stderr[-2000:]
        runs[objective] = d
    return runs


def svg_texts(svg):
    """(attributes, text) of every <text> element, unescaped."""
    out = []
    for attrs, text in re.findall(r"<text([^>]*)>([^<]*)</text>", svg):
        out.append((attrs, text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"').replace("&amp;", "&")))
    return out


def axis_ticks(svg, anchor):
    """Tick labels per panel: y ("end") or x ("middle", without the axis titles)."""
    panels = []
    for attrs, text in svg_texts(svg):
        if f'text-anchor="{anchor}"' not in attrs or not re.fullmatch(r"-?[0-9.]+", text):
            continue
        if not panels or float(text) <= float(panels[-1][-1]):
            panels.append([])
        panels[-1].append(text)
    return panels


@needs_bin
def test_cli_plot_real_runs_read_as_a_report(real_runs, tmp_path):
    out = tmp_path / "cmp.svg"
    p = subprocess.run([str(BIN), "plot", str(real_runs["sftgo"]), str(real_runs["ce"]), "--labels", "SFT-GO, SFT",
                        "-o", str(out)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    svg = out.read_text()
    texts = [t for _, t in svg_texts(svg)]
    # Title from the runs' resolved_config.yaml (loss.objective), legend from --labels.
    assert texts[0] == "SFT-GO vs SFT: losses by token group", texts[:3]
    assert "SFT-GO" in texts and "SFT" in texts and "run_ce" not in texts and "run_sftgo" not in texts
    # Step axis: both panels 0..70 by integers; the last tick at or after step 69 but less than one
    # tick step beyond it.
    xs = axis_ticks(svg, "middle")
    assert len(xs) == 2 and xs[0] == xs[1], xs
    vals = [float(v) for v in xs[0]]
    assert all(v == int(v) and "." not in t for v, t in zip(vals, xs[0])), xs
    assert vals[0] == 0 and STEPS <= vals[-1] < STEPS + (vals[1] - vals[0]), vals
    # The held-out curve starts where training starts: the trainer evaluates the initial weights
    # (step 0), then every 10 steps and after the last one, all on the training panel's axis.
    evals = [json.loads(l)["step"] for l in (real_runs["ce"] / "metrics.jsonl").read_text().splitlines()
             if "eval_loss" in l]
    assert evals == [0, 10, 20, 30, 40, 50, 60, STEPS], evals
    # --title replaces the title; a plain SFT run alone is not called SFT-GO.
    p = subprocess.run([str(BIN), "plot", str(real_runs["ce"]), "--title", "Figure 3: <SFT> baseline", "-o",
                        str(tmp_path / "t.svg")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert svg_texts((tmp_path / "t.svg").read_text())[0][1] == "Figure 3: <SFT> baseline"
    p = subprocess.run([str(BIN), "plot", str(real_runs["ce"])], capture_output=True, text=True)
    svg = (real_runs["ce"] / "group_losses.svg").read_text()
    assert svg_texts(svg)[0][1] == "SFT losses by token group: run_ce" and "SFT-GO" not in svg
    # --labels must name every run; an unknown extension is refused (exit 2, the flag named).
    p = subprocess.run([str(BIN), "plot", str(real_runs["ce"]), "--labels", "a,b"], capture_output=True, text=True)
    assert p.returncode == 2 and "--labels" in p.stderr, p.stderr
    p = subprocess.run([str(BIN), "plot", str(real_runs["ce"]), "-o", str(tmp_path / "x.jpg")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and ".png" in p.stderr, p.stderr


def read_png(path):
    """(width, height, pixels as RGB tuples) with PIL, or (width, height, None) from the IHDR alone."""
    import struct
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = struct.unpack(">II", data[16:24])
    try:
        from PIL import Image
    except ImportError:
        return w, h, None
    img = Image.open(path).convert("RGB")
    assert img.size == (w, h)
    return w, h, list(img.getdata())


def count_near(png_pixels, width, box, rgb, tol):
    """Pixels within `tol` (sum of |channel differences|) of `rgb` inside box = (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    return sum(sum(abs(a - b) for a, b in zip(png_pixels[y * width + x], rgb)) <= tol
               for y in range(y0, y1) for x in range(x0, x1))


def training_panel_box(svg_text, scale=2):
    """The training panel's inside in PNG pixels, from the SVG's first framed rect."""
    x, y, w, h = (float(v) for v in re.search(
        r'<rect x="([0-9.]+)" y="([0-9.]+)" width="([0-9.]+)" height="([0-9.]+)" fill="none" stroke=', svg_text).groups())
    return (int(scale * x) + 3, int(scale * y) + 3, int(scale * (x + w)) - 3, int(scale * (y + h)) - 3)


@needs_bin
def test_cli_plot_png_of_real_runs(real_runs, tmp_path):
    args = [str(BIN), "plot", str(real_runs["sftgo"]), str(real_runs["ce"]), "--labels", "SFT-GO,SFT", "--objective"]
    png, svg = tmp_path / "cmp.png", tmp_path / "cmp.svg"
    p = subprocess.run(args + ["-o", str(png)], capture_output=True, text=True)
    if p.returncode == 1 and "without cairo" in p.stderr:
        pytest.skip("this sftgo-train was built without cairo (libcairo2-dev)")
    assert p.returncode == 0 and p.stdout.strip() == str(png), p.stderr
    subprocess.run(args + ["-o", str(svg)], check=True, capture_output=True)
    svg_text = svg.read_text()
    sw, sh = (float(v) for v in re.search(r'width="([0-9.]+)" height="([0-9.]+)"', svg_text).groups())
    w, h, pixels = read_png(png)
    assert (w, h) == (math.ceil(2 * sw), math.ceil(2 * sh))  # --scale 2 by default
    if pixels is None:
        return
    # Not blank: curves, text and grid cover a good part of the page.
    assert sum(px != (255, 255, 255) for px in pixels) > 0.03 * w * h
    # Inside the training panel: each series' colour (bold smoothed curves, tol 30 for anti-aliasing)
    # and the SFT-GO run's objective, grey #7f7f7f at opacity 0.8 on white = (153, 153, 153).
    box = training_panel_box(svg_text)
    for rgb in ((0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e), (0x2c, 0xa0, 0x2c)):
        assert count_near(pixels, w, box, rgb, 30) > 500, rgb
    assert count_near(pixels, w, box, (153, 153, 153), 9) > 300  # measured ~1500 for one SFT-GO run
    # A plain SFT run with --objective: its objective is L_CE, so no grey curve is drawn over it.
    p = subprocess.run([str(BIN), "plot", str(real_runs["ce"]), "--objective", "-o", str(tmp_path / "ce.png")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    subprocess.run([str(BIN), "plot", str(real_runs["ce"]), "--objective", "-o", str(tmp_path / "ce.svg")], check=True,
                   capture_output=True)
    w, h, pixels = read_png(tmp_path / "ce.png")
    box = training_panel_box((tmp_path / "ce.svg").read_text())
    assert count_near(pixels, w, box, (153, 153, 153), 9) == 0
    assert count_near(pixels, w, box, (0x1f, 0x77, 0xb4), 30) > 500


def test_plot_runs_py_names_the_method_and_keeps_lce_visible_for_sft(real_runs, tmp_path):
    pytest.importorskip("matplotlib")
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(real_runs["ce"]), "--objective", "--out",
                        str(tmp_path / "ce")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    svg = (tmp_path / "ce.svg").read_text()
    assert "SFT losses by token group: run_ce" in svg and "SFT-GO" not in svg
    assert "stroke: #7f7f7f" not in svg  # L_CE is the objective: no grey line over it
    assert "objective = $L_{CE}$ (SFT)" in svg
    # x ticks 0..70 (matplotlib writes each tick label as a comment).
    assert re.findall(r"<!-- (\d+) -->", svg)[:8] == ["0", "10", "20", "30", "40", "50", "60", "70"]
    p = subprocess.run([PY, str(ROOT / "scripts/plot_runs.py"), str(real_runs["sftgo"]), "--objective", "--out",
                        str(tmp_path / "go")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    svg = (tmp_path / "go.svg").read_text()
    assert "SFT-GO losses by token group: run_sftgo" in svg and "stroke: #7f7f7f" in svg
