"""Markdown memory tables of docs/architecture.md, generated from
`sftgo-train plan --json` (issue #27: the docs' numbers are the planner's). tests/python/test_plan.py
checks that the docs hold exactly this output between the `plan-table` markers.

Usage: .venv/bin/python bench/dist/plan_tables.py [--build build] [breakdown|scenarios]
"""
import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = "configs/lima_llama8b_sft.yaml"  # bf16 weights + fp32 masters, checkpointing, 2 x 4096 tokens, ZeRO-1
# (name, preset, ranks, GB per GPU)
SCENARIOS = [("8B on 8 x 80 GB", "llama3.1-8b", 8, 80), ("8B on 4 x 80 GB", "llama3.1-8b", 4, 80),
             ("8B on 8 x 40 GB", "llama3.1-8b", 8, 40), ("70B on 4 nodes x 8 x 80 GB", "llama3.1-70b", 32, 80)]
PARTS = ["weights", "gradients", "masters", "moments", "comm", "activations"]


def plan(binary, preset, ranks, mem):
    cmd = [str(binary), "plan", "--config", CONFIG, "--set", "model.path=", "--set", f"model.preset={preset}",
           "--gpus", str(ranks), "--gpu-mem", str(mem), "--json"]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout)


def gb(b):
    return f"{b / 1e9:.1f}"


def label(row):
    return row["choice"] + ("" if row["implemented"] else " (planned)")


def breakdown(binary):
    """Every term of every choice for 8B on 8 x 80 GB."""
    p = plan(binary, "llama3.1-8b", 8, 80)
    out = ["| per GPU, GB | " + " | ".join(label(r) for r in p["choices"]) + " |",
           "|---|" + "---|" * len(p["choices"])]
    for part in PARTS:
        out.append(f"| {part} | " + " | ".join(gb(r[part]) for r in p["choices"]) + " |")
    out.append("| **GPU total** | " + " | ".join(f"**{gb(r['device_total'])}**" for r in p["choices"]) + " |")
    out.append("| host memory per rank | " + " | ".join(gb(r["host"]) for r in p["choices"]) + " |")
    return "\n".join(out)


def scenarios(binary):
    """GPU total per rank and fit for each scenario and choice; total + 2 GB reserve <= GPU memory."""
    plans = [plan(binary, preset, ranks, mem) for _, preset, ranks, mem in SCENARIOS]
    out = ["| choice | " + " | ".join(s[0] for s in SCENARIOS) + " |", "|---|" + "---|" * len(SCENARIOS)]
    for i, row in enumerate(plans[0]["choices"]):
        cells = []
        for (_, _, _, mem), p in zip(SCENARIOS, plans):
            r = p["choices"][i]
            need = r["device_total"] + p["reserve_bytes"]
            cells.append(f"{gb(r['device_total'])} + 2 = {gb(need)} {'<=' if r['fits'] else '>'} {mem}: "
                         f"{'fits' if r['fits'] else '**no**'}")
        out.append(f"| {label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default="build")
    ap.add_argument("table", choices=["breakdown", "scenarios"])
    a = ap.parse_args()
    binary = (ROOT / a.build / "bin/sftgo-train").resolve()
    print(breakdown(binary) if a.table == "breakdown" else scenarios(binary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
