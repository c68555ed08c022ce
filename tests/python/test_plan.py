"""`sftgo-train plan` (docs/memory.md, issue #27): every command docs/memory.md shows runs as written
and labels every row runnable (dist.zero 0-3, offload with stages 2 and 3); the memory tables of docs/architecture.md are exactly
what bench/dist/plan_tables.py generates from `plan --json`; the per-layer activation bytes equal the
tensors PyTorch's autograd saves for the same operations as src/model/llama.cpp's decoder block
(an independent count); bad input exits 1 or 2 naming the problem."""
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DOC = ROOT / "docs" / "memory.md"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
sys.path.insert(0, str(ROOT / "bench" / "dist"))
import plan_tables  # noqa: E402


def doc_commands():
    cmds, block = [], None
    for line in DOC.read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```sh" and block is None else None
            continue
        if block is not None and line.strip() and not line.lstrip().startswith("#"):
            cmds.append(line.strip())
    return cmds


def plan(*args):
    p = subprocess.run([str(BIN), "plan", *args], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_every_documented_command_runs():
    cmds = doc_commands()
    assert len(cmds) >= 3
    for cmd in cmds:
        argv = shlex.split(cmd)
        assert argv[0] == "build/bin/sftgo-train" and argv[1] == "plan", cmd
        p = subprocess.run([str(BIN)] + argv[1:], capture_output=True, text=True, cwd=ROOT)
        assert p.returncode == 0, (cmd, p.stderr)
        if "--json" in argv:
            j = json.loads(p.stdout)
            names = [r["choice"] for r in j["choices"]]
            assert names == ["ddp", "zero1", "zero2", "zero3", "zero2_offload", "zero3_offload"]
            assert all(r["implemented"] and r["status"] == "runnable" for r in j["choices"])
            assert [r["recomputes"] for r in j["choices"]] == [False, False, False, True, False, True]
            assert sum(r["current"] for r in j["choices"]) == 1
            # zero3 counts the checkpointed activations; offload moves 16 bytes x shard (AdamW) to the host.
            assert j["choices"][3]["activations"] == j["activations_recomputed"]["total"]
            for plain, off in ((2, 4), (3, 5)):
                a, b = j["choices"][plain], j["choices"][off]
                assert a["host"] == 0 and b["host"] == a["masters"] + a["moments"] + a["masters"]
                assert b["device_total"] + b["host"] == a["device_total"]
            for r in j["choices"]:  # the step's temporaries replace the activations, freed by then
                assert r["device_total"] == expected_total(r), r
        else:
            assert "planned" not in p.stdout, p.stdout
            assert "zero3 keeps whole only" in p.stdout and "host column" in p.stdout
            assert "(this config)" in p.stdout


def expected_total(r):
    """docs/memory.md's total: rows that hold their gradients count them with the state; a row whose
    gradients are freed between steps (one process, no ZeRO) has them only from the backward to the step."""
    if not r["gradients_freed"]:
        persistent = sum(r[k] for k in plan_tables.PARTS if k != "activations")
        phases = {"backward": r["activations"], "step": r["step_transient"]}
    else:
        persistent = sum(r[k] for k in plan_tables.PARTS if k not in ("activations", "gradients"))
        phases = {"backward": r["activations"] + r["backward_gradients"],
                  "step": r["gradients"] + r["step_transient"]}
    peak = "step" if phases["step"] > phases["backward"] else "backward"
    assert r["peak_phase"] == peak, r
    return persistent + phases[peak]


def test_one_process_fp32_frees_its_gradients_between_steps():
    sets = ["model.device=cpu", "train.global_batch_size=1", "train.micro_batch_size=1", "train.precision=fp32"]
    args = [x for s in sets for x in ("--set", s)]
    one = json.loads(plan("--config", "configs/demo_tiny.yaml", *args, "--json"))
    ddp = one["choices"][0]
    assert ddp["current"] and ddp["gradients_freed"] and ddp["device_total"] == expected_total(ddp)
    assert not any(r["gradients_freed"] for r in one["choices"][1:])  # ZeRO keeps its buffers
    assert "on one process: zero_grad frees the gradients" in plan("--config", "configs/demo_tiny.yaml", *args)
    # Two ranks (bucket views) or two micro-batches per step (accumulation): held, as before.
    two = json.loads(plan("--config", "configs/demo_tiny.yaml", *args, "--gpus", "2", "--json"))
    acc = json.loads(plan("--config", "configs/demo_tiny.yaml", *args, "--set", "train.global_batch_size=2", "--json"))
    assert not two["choices"][0]["gradients_freed"] and not acc["choices"][0]["gradients_freed"]
    bf16 = json.loads(plan("--config", "configs/demo_tiny.yaml", *args, "--set", "train.precision=bf16", "--json"))
    assert not bf16["choices"][0]["gradients_freed"]  # the fp32 master gradients are kept


def between_markers(text, name):
    begin, end = f"<!-- plan-table:{name}:begin -->\n", f"\n<!-- plan-table:{name}:end -->"
    assert begin in text and end in text, name
    return text.split(begin, 1)[1].split(end, 1)[0]


def test_docs_tables_are_the_planners_output():
    arch = (ROOT / "docs" / "architecture.md").read_text()
    assert between_markers(arch, "breakdown") == plan_tables.breakdown(BIN)
    assert between_markers(arch, "scenarios") == plan_tables.scenarios(BIN)


def test_the_row_this_config_runs_follows_dist_zero1():
    cfg = "configs/demo_tiny.yaml"
    for zero1, current in (("false", "ddp"), ("true", "zero1")):
        j = json.loads(plan("--config", cfg, "--set", f"dist.zero1={zero1}", "--gpus", "2", "--json"))
        assert [r["choice"] for r in j["choices"] if r["current"]] == [current]


def test_the_row_this_config_runs_follows_dist_zero_and_offload():
    cfg = "configs/demo_tiny.yaml"
    for zero, offload, current in (("2", "none", "zero2"), ("3", "none", "zero3"), ("2", "cpu", "zero2_offload"),
                                   ("3", "cpu", "zero3_offload")):
        j = json.loads(plan("--config", cfg, "--set", f"dist.zero={zero}", "--set", f"dist.offload_optimizer={offload}",
                            "--gpus", "2", "--json"))
        assert [r["choice"] for r in j["choices"] if r["current"]] == [current]


def saved_bytes_per_layer(torch, dtype, tokens, h, inter, heads, kv_heads, autocast):
    """Bytes of the tensors autograd saves for one decoder layer written as src/model/llama.cpp's Block
    (RMSNorm with fp32 statistics, q/k/v/o projections, RoPE, SDPA with GQA, SwiGLU MLP), counted
    once per storage, parameters and RoPE tables excluded."""
    F = torch.nn.functional
    hd = h // heads
    g = torch.Generator().manual_seed(0)

    def lin(i, o):
        return torch.randn(o, i, generator=g, dtype=dtype).requires_grad_()

    wq, wk, wv, wo = lin(h, h), lin(h, kv_heads * hd), lin(h, kv_heads * hd), lin(h, h)
    wg, wu, wd = lin(h, inter), lin(h, inter), lin(inter, h)
    n1, n2 = torch.ones(h, dtype=dtype).requires_grad_(), torch.ones(h, dtype=dtype).requires_grad_()
    cos, sin = torch.randn(1, tokens, hd, dtype=dtype), torch.randn(1, tokens, hd, dtype=dtype)
    x = torch.randn(1, tokens, h, dtype=dtype).requires_grad_()
    excluded = {t.untyped_storage().data_ptr() for t in (wq, wk, wv, wo, wg, wu, wd, n1, n2, cos, sin)}
    seen = {}

    def norm(t, w):
        tf = t.to(torch.float32)
        return w * (tf * torch.rsqrt(tf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(t.dtype)

    def rope(t):
        half = t.size(-1) // 2
        rot = torch.cat([-t[..., half:], t[..., :half]], -1)
        return t * cos.unsqueeze(1) + rot * sin.unsqueeze(1)

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx, torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        a = norm(x, n1)
        q = rope(F.linear(a, wq).view(1, tokens, heads, hd).transpose(1, 2))
        k = rope(F.linear(a, wk).view(1, tokens, kv_heads, hd).transpose(1, 2))
        v = F.linear(a, wv).view(1, tokens, kv_heads, hd).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        hh = x + F.linear(y.transpose(1, 2).reshape(1, tokens, h), wo)
        b = norm(hh, n2)
        hh + F.linear(F.silu(F.linear(b, wg)) * F.linear(b, wu), wd)
    total = sum(n for p, n in seen.items() if p not in excluded)
    if autocast:  # the bf16 weight casts are their own planner term (activations.autocast_weights)
        total -= 2 * (2 * h * h + 2 * h * kv_heads * hd + 3 * h * inter)
    return total


@pytest.mark.parametrize("precision", ["fp32", "bf16", "bf16_autocast"])
def test_per_layer_activations_match_pytorchs_saved_tensors(precision):
    torch = pytest.importorskip("torch")
    shape = {"hidden_size": 256, "intermediate_size": 768, "num_heads": 8, "num_kv_heads": 2}
    tokens = 128
    sets = [f"model.{k}={v}" for k, v in shape.items()] + [
        "model.num_layers=2", "train.micro_batch_size=1", f"data.max_seq_len={tokens}",
        f"train.precision={precision}"]
    j = json.loads(plan("--config", "configs/demo_tiny.yaml", *[x for s in sets for x in ("--set", s)], "--json"))
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    want = saved_bytes_per_layer(torch, dtype, tokens, shape["hidden_size"], shape["intermediate_size"],
                                 shape["num_heads"], shape["num_kv_heads"], precision == "bf16_autocast")
    # Exact: both sides count bytes of the same tensors (tolerance 0).
    assert j["activations"]["per_layer"] == want


def test_bad_input_is_reported():
    p = subprocess.run([str(BIN), "plan", "--gpus", "0"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 2 and "--gpus" in p.stderr
    p = subprocess.run([str(BIN), "plan", "--config", "configs/demo_tiny.yaml", "--set", "train.micro_batchsize=2"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "micro_batchsize" in p.stderr
    p = subprocess.run([str(BIN), "plan", "--config", "configs/lima_llama8b_sft.yaml", "--set",
                        "model.path=/nonexistent/model"], capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "config.json" in p.stderr and "model.path" in p.stderr
