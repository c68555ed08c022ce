"""ZeRO-3 (dist.zero: 3) end to end on CPU with Gloo. Stage 3 shares stage 2's gradient reduction and
update and gathers each layer's weights as master.to(working dtype), the values stages 1 and 2 copy into
the parameters, so against stage 2 on the same ranks it must give the same bits (the forced per-layer
recomputation runs the same operations). Against one process, 2 and 4 ranks, and torchrun: the ZeRO-1
tolerance (ATOL). Checkpoints move between stages and world sizes; a rank that aborts a step replays
the other ranks' gathers; the refused combinations name their keys."""
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from launch_util import free_port, mpirun_cmd
from test_dist_mpirun import ATOL, BIN, ROOT, args, last_ckpt, metrics, pytestmark, train, weights  # noqa: F401
from test_zero2_mpirun import LORA, LORA_CE_RHO1, adapter, resume_from_step_3, same_run  # noqa: F401

Z3 = ["dist.zero=3", "dist.bucket_mb=0.01"]
Z2 = ["dist.zero=2", "dist.bucket_mb=0.01"]


def identical(a, b):
    """Same weights and per-step metrics (loss, group losses, grad norm, skips), bit for bit."""
    worst = weight_diff(last_ckpt(a), last_ckpt(b))
    assert worst == 0.0, f"max abs weight difference {worst:.3g}"
    keys = ("step", "loss", "loss_ce", "loss_imp", "loss_unimp", "grad_norm", "skipped", "worst_group")
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) and ma
    assert [[x.get(k) for k in keys] for x in ma] == [[y.get(k) for k in keys] for y in mb]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero3_equals_zero2_bit_for_bit(tmp_path, precision):
    # 2 micro-batches per rank, so every layer is gathered for 2 forwards and 2 recomputations a step.
    z2, z3 = tmp_path / "z2", tmp_path / "z3"
    p = [f"train.precision={precision}"]
    train(z2, ranks=2, global_batch=8, micro=2, extra=p + Z2)
    out = train(z3, ranks=2, global_batch=8, micro=2, extra=p + Z3)
    identical(z2, z3)
    assert "ZeRO-3" in out.stderr
    assert sorted(q.name for q in last_ckpt(z3).glob("zero_rank*")) == [
        "zero_rank00000_of_00002.pt", "zero_rank00001_of_00002.pt"]


def test_zero3_two_and_four_ranks_equal_one_rank(tmp_path):
    # The tolerance of the ZeRO-1 test (test_dist_mpirun.ATOL): the same sums in another order.
    one, two, four = tmp_path / "one", tmp_path / "two", tmp_path / "four"
    train(one)
    train(two, ranks=2, extra=Z3)
    train(four, ranks=4, micro=2, extra=Z3)
    same_run(one, two, ATOL, 1e-5, 1e-4)
    same_run(one, four, ATOL, 1e-5, 1e-4)


def test_zero3_one_rank_is_the_same_code_path(tmp_path):
    # World size 1: every gather is a local cast of the master shard (no broadcast), the same code path
    # a single GPU checks. Same bits as stage 1 on one process (one fp32 sum of nothing).
    z1, z3 = tmp_path / "z1", tmp_path / "z3"
    train(z1, extra=["dist.zero=1"])
    out = train(z3, extra=Z3)
    identical(z1, z3)
    assert "ZeRO-3" in out.stderr


@LORA_CE_RHO1
def test_zero3_equals_zero2_lora_ce_rho1(tmp_path, job):
    # With LoRA only the adapters are trained, so only they are sharded and gathered (the frozen base
    # stays whole on every rank); Rho-1's reference is the base model, run through the same layers.
    z2, z3 = tmp_path / "z2", tmp_path / "z3"
    train(z2, ranks=2, global_batch=8, micro=2, extra=job + Z2)
    train(z3, ranks=2, global_batch=8, micro=2, extra=job + Z3)
    identical(z2, z3)
    if "lora.enabled=true" in job:
        a2, a3 = adapter(last_ckpt(z2)), adapter(last_ckpt(z3))
        assert a2.keys() == a3.keys() and a2
        assert max(float(np.abs(a2[k] - a3[k]).max()) for k in a2) == 0.0


def weight_diff(a, b):
    """Largest absolute difference between two checkpoints' model.safetensors (same tensor names)."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and wa
    return max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)


def test_zero3_checkpoint_resumes_as_zero1_and_on_4_ranks(tmp_path):
    keep = ["train.save_every=3", "train.keep_last=5"]
    z1, z3 = tmp_path / "z1", tmp_path / "z3"
    train(z1, ranks=2, steps=6, extra=["dist.zero=1"] + keep)
    train(z3, ranks=2, steps=6, extra=Z3 + keep)
    z1_end, z3_end = z1 / "checkpoints" / "step_00000006", z3 / "checkpoints" / "step_00000006"
    # One micro-batch per rank: stage 3 gives stage 1's bits, and so does stage 3 -> stage 1 on resume.
    assert weight_diff(z1_end, z3_end) == 0.0
    as_z1 = tmp_path / "as_z1"
    resume_from_step_3(z3, as_z1, 2, 1)
    assert weight_diff(z1_end, last_ckpt(as_z1)) == 0.0
    # 2 -> 4 ranks, stage 3: the same 8 examples per step summed in another order (ATOL).
    four = tmp_path / "four"
    resume_from_step_3(z3, four, 4, 3, micro=2)
    worst = weight_diff(z3_end, last_ckpt(four))
    assert worst <= ATOL, f"max abs weight difference {worst:.3g} > {ATOL:g}"
    # Stage 1 -> stage 3 on the same ranks: stage 1's bits again.
    z1_as_z3 = tmp_path / "z1_as_z3"
    resume_from_step_3(z1, z1_as_z3, 2, 3)
    assert weight_diff(z1_end, last_ckpt(z1_as_z3)) == 0.0


def test_zero3_one_rank_aborting_a_step_skips_it_on_every_rank(tmp_path, monkeypatch):
    # Rank 1's step 2 fails at its first of 2 micro-batches, after that micro-batch's forward, as a
    # non-finite loss would; rank 0 runs its backward and a second forward and backward, each gathering
    # every layer. Rank 1 must issue those gathers too, or rank 0 waits until dist.timeout_s (20 s).
    monkeypatch.setenv("SFTGO_TEST_NONFINITE_AT", "1:2")
    z2, z3 = tmp_path / "z2", tmp_path / "z3"
    train(z2, ranks=2, timeout=120, micro=2, extra=Z2)
    p = train(z3, ranks=2, timeout=120, micro=2, extra=Z3)
    assert "non-finite loss injected by SFTGO_TEST_NONFINITE_AT" in p.stderr + p.stdout
    m = metrics(z3)
    assert [x["skipped"] for x in m] == [False, True, False, False]
    identical(z2, z3)


TORCHRUN = os.path.join(os.environ.get("VIRTUAL_ENV", str(ROOT / ".venv")), "bin", "torchrun")


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun (torch wheel) not installed")
@pytest.mark.parametrize("stage", [2, 3])
def test_zero_stages_under_torchrun_equal_mpirun(tmp_path, stage):
    extra = Z2 if stage == 2 else Z3
    mp, tr = tmp_path / "mpirun", tmp_path / "torchrun"
    train(mp, ranks=2, extra=extra)
    cmd = [TORCHRUN, "--no-python", "--nproc-per-node", "2", "--master-port", str(free_port()), str(BIN)]
    p = subprocess.run(cmd + args(tr, extra=extra), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "2 ranks (torchrun)" in p.stderr
    assert f"ZeRO stage {stage}" in p.stderr
    identical(mp, tr)


def test_zero3_refuses_eval_tasks_and_unknown_stages(tmp_path):
    p = subprocess.run([str(BIN)] + args(tmp_path, extra=Z3 + ["train.eval_tasks=lambada:x.jsonl"]),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode != 0
    assert "train.eval_tasks cannot run with dist.zero: 3" in p.stderr
    assert "sftgo-train eval" in p.stderr
    p = subprocess.run([str(BIN)] + args(tmp_path, extra=["dist.zero=4"]),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode != 0
    assert "dist.zero" in p.stderr and "4" in p.stderr


@pytest.mark.parametrize("zero", [2, 3])
def test_offload_optimizer_changes_no_number(tmp_path, zero):
    # dist.offload_optimizer: cpu keeps the masters, the optimizer state and the gradient shard in host
    # memory and runs the update there. On a CPU run that is where they are anyway, so only the code
    # path is exercised (the device-to-host copies are identities): the same bits, and it says so.
    base, off = tmp_path / "base", tmp_path / "off"
    z = [f"dist.zero={zero}", "dist.bucket_mb=0.01"]
    train(base, ranks=2, global_batch=8, micro=2, extra=z)
    p = train(off, ranks=2, global_batch=8, micro=2, extra=z + ["dist.offload_optimizer=cpu"])
    identical(base, off)
    assert "model.device is cpu, so this moves nothing" in p.stderr


def test_offload_refused_without_sharded_gradients_or_host_memory(tmp_path, monkeypatch):
    p = subprocess.run([str(BIN)] + args(tmp_path / "a", extra=["dist.zero=1", "dist.offload_optimizer=cpu"]),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode != 0
    assert "dist.offload_optimizer: cpu needs the sharded gradients of ZeRO stage 2 or 3, but dist.zero is 1" in p.stderr
    assert "set dist.zero: 2 or 3" in p.stderr
    # A host with 1 MB free: refused at start, with what it needs and what there is, before training.
    monkeypatch.setenv("SFTGO_TEST_MEM_AVAILABLE_BYTES", "1000000")
    p = subprocess.run(mpirun_cmd(2) + [str(BIN)] + args(tmp_path / "b", extra=Z3 + ["dist.offload_optimizer=cpu"]),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode != 0
    err = p.stdout + p.stderr
    # 2 ranks x 16 bytes (fp32 master, AdamW's 2 moments, gradient shard) x each rank's half of the parameters.
    m = re.search(r"error: rank \d: dist\.offload_optimizer: cpu needs ([\d.]+) MB of host memory \(2 rank\(s\) on "
                  r"this host x ([\d.]+) MB of fp32 master weights, optimizer state and gradient shard\), but 1\.0 MB "
                  r"is available \(hint: use more ranks \(or hosts\) so each holds a smaller shard, or set "
                  r"dist\.offload_optimizer: none\)", err)
    assert m, err
    assert float(m.group(1)) == pytest.approx(2 * float(m.group(2)), abs=0.1)
    assert not (tmp_path / "b" / "metrics.jsonl").exists()


def test_documented_zero3_commands_run(tmp_path):
    # docs/gpu.md's ZeRO-3 block, as a user on a GPU node types it; here 2 CPU ranks stand in for 8 GPUs
    # (model.device cpu), with a short run into a temporary directory. The plan line runs as written,
    # twice (the same output both times).
    text = (ROOT / "docs/gpu.md").read_text()
    block = text.split("**ZeRO-3 and offload on one GPU, and what needs several.**")[1].split("```bash\n")[1]
    lines = block.split("```")[0].strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("mpirun -np 8 build/bin/sftgo-train ") and "plan" in lines[1]
    train_args = lines[0].split()[3:]
    assert train_args[:2] == ["build/bin/sftgo-train", "--config"]
    cmd = mpirun_cmd(2) + [str(BIN)] + [a.replace("model.device=cuda", "model.device=cpu") for a in train_args[1:]]
    cmd += ["--set", f"run.output_dir={tmp_path / 'run'}", "--set", "train.max_steps=2", "--set", "train.num_threads=1"]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "ZeRO-3: weights sharded over 2 rank(s)" in p.stderr
    # Typed again: --resume auto finds the run complete and does nothing, exit 0.
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "is already complete at step 2: nothing to do" in again.stderr
    plan = [str(BIN)] + lines[1].split()[1:]
    outs = [subprocess.run(plan, capture_output=True, text=True, cwd=ROOT, timeout=60) for _ in range(2)]
    assert all(o.returncode == 0 for o in outs) and outs[0].stdout == outs[1].stdout
    assert "zero3" in outs[0].stdout


def test_zero3_loads_model_path_tensor_by_tensor(tmp_path):
    # With model.path, stage 3 builds the model without memory and each rank reads every tensor once,
    # keeping its shard (model::weight_source): the same start as stage 2's whole-model load, so the
    # same bits after training from it. The start is a checkpoint of a short first run.
    first = tmp_path / "first"
    train(first, steps=2)
    start = [f"model.path={last_ckpt(first)}"]
    z2, z3 = tmp_path / "z2", tmp_path / "z3"
    train(z2, ranks=2, global_batch=8, micro=2, extra=start + Z2)
    train(z3, ranks=2, global_batch=8, micro=2, extra=start + Z3)
    identical(z2, z3)
    # A checkpoint without one of the model's tensors: named, with the directory, before training.
    from safetensors.torch import load_file, save_file
    bad = tmp_path / "bad"
    shutil.copytree(last_ckpt(first), bad)
    tensors = load_file(str(bad / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(bad / "model.safetensors"), metadata={"format": "pt"})
    p = subprocess.run(mpirun_cmd(2) + [str(BIN)] + args(tmp_path / "z3bad", extra=[f"model.path={bad}"] + Z3),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode != 0
    assert f"{bad}: missing parameter model.layers.1.mlp.up_proj.weight (hint: the checkpoint does not match " \
           "config.json)" in p.stderr
    assert not (tmp_path / "z3bad" / "metrics.jsonl").exists()
