"""ZeRO-2 (dist.zero: 2) end to end on CPU with Gloo: the same trajectory as ZeRO-1 and as one process
with the same global batch, for fp32 and bf16 with fp32 masters; a ZeRO-2 checkpoint resumed as
ZeRO-1; dist.zero1: true with dist.zero: 2 refused naming both keys."""
import shutil
import subprocess

import numpy as np
import pytest

from launch_util import mpirun_cmd
from test_dist_mpirun import ATOL, BIN, ROOT, args, last_ckpt, metrics, pytestmark, train, weights  # noqa: F401


def same_run(a, b, atol, loss_rel, norm_rel):
    wa, wb = weights(last_ckpt(a)), weights(last_ckpt(b))
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= atol, f"max abs weight difference {worst:.3g} > {atol:g}"
    ma, mb = metrics(a), metrics(b)
    assert len(ma) == len(mb) and ma
    for x, y in zip(ma, mb):
        assert x["loss"] == pytest.approx(y["loss"], rel=loss_rel, abs=0)
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=norm_rel, abs=0)
    return worst


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_zero2_equals_zero1_bit_for_bit_one_micro_batch(tmp_path, precision):
    # One micro-batch per rank: both stages sum the same two fp32 gradients (a + b = b + a: Gloo's
    # reduce and reduce-scatter may add in either order, exact for 2 ranks) into a zeroed shard, so the
    # update, the norm and the gathered weights are the same bits.
    z1, z2 = tmp_path / "z1", tmp_path / "z2"
    p = [f"train.precision={precision}"]
    train(z1, ranks=2, extra=p + ["dist.zero=1"])
    train(z2, ranks=2, extra=p + ["dist.zero=2", "dist.bucket_mb=0.01"])
    assert same_run(z1, z2, 0.0, 0.0, 0.0) == 0.0
    assert sorted(q.name for q in last_ckpt(z2).glob("zero_rank*")) == [
        "zero_rank00000_of_00002.pt", "zero_rank00001_of_00002.pt"]


def test_zero2_two_ranks_equal_one_rank(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    train(one)
    train(two, ranks=2, extra=["dist.zero=2", "dist.bucket_mb=0.01"])
    # The tolerance of the ZeRO-1 test (test_dist_mpirun.ATOL): the same sums in another order.
    same_run(one, two, ATOL, 1e-5, 1e-4)


def test_zero2_several_micro_batches_match_zero1(tmp_path):
    # 2 micro-batches per rank: ZeRO-2 sums over ranks per micro-batch, then micro-batches; ZeRO-1 the
    # other way round. fp32 rounding of the sums (~1e-7 relative) then AdamW as in ATOL's note.
    z1, z2 = tmp_path / "z1", tmp_path / "z2"
    train(z1, ranks=2, global_batch=8, micro=2, extra=["dist.zero=1"])
    train(z2, ranks=2, global_batch=8, micro=2, extra=["dist.zero=2", "dist.bucket_mb=0.01"])
    same_run(z1, z2, ATOL, 1e-5, 1e-4)


def resume_from_step_3(src, dst, ranks, zero, micro=4):
    (dst / "checkpoints").mkdir(parents=True)
    shutil.copytree(src / "checkpoints" / "step_00000003", dst / "checkpoints" / "step_00000003")
    cmd = args(dst, steps=6, micro=micro, extra=[f"dist.zero={zero}", "train.save_every=3"]) + ["--resume", "auto"]
    p = subprocess.run(mpirun_cmd(ranks) + [str(BIN)] + cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "resumed from" in p.stderr


def test_zero2_checkpoint_resumes_as_zero1_and_on_4_ranks(tmp_path):
    z1, z2 = tmp_path / "z1", tmp_path / "z2"
    keep = ["train.save_every=3", "train.keep_last=5"]
    train(z1, ranks=2, steps=6, extra=["dist.zero=1"] + keep)
    train(z2, ranks=2, steps=6, extra=["dist.zero=2", "dist.bucket_mb=0.01"] + keep)
    # Stage 2 -> stage 1 on the same 2 ranks: ZeRO-1's shard files, and (one micro-batch per rank)
    # the same bits as the stage-1 run all along.
    as_z1 = tmp_path / "as_z1"
    resume_from_step_3(z2, as_z1, 2, 1)
    wa, wb = weights(z1 / "checkpoints" / "step_00000006"), weights(last_ckpt(as_z1))
    assert max(float(np.abs(wa[k] - wb[k]).max()) for k in wa) == 0.0
    # 2 -> 4 ranks, stage 2: 4 x 2 examples per step, the same 8; sums over ranks in another order,
    # so the tolerance of the 1-vs-2-rank test.
    four = tmp_path / "four"
    resume_from_step_3(z2, four, 4, 2, micro=2)
    wa, wb = weights(z2 / "checkpoints" / "step_00000006"), weights(last_ckpt(four))
    worst = max(float(np.abs(wa[k] - wb[k]).max()) for k in wa)
    assert worst <= ATOL, f"max abs weight difference {worst:.3g} > {ATOL:g}"


def test_zero1_true_with_zero_2_is_refused(tmp_path):
    p = subprocess.run([str(BIN)] + args(tmp_path, extra=["dist.zero1=true", "dist.zero=2"]),
                       capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode != 0
    assert "dist.zero1: true asks for ZeRO stage 1, but dist.zero is 2" in p.stdout + p.stderr


@pytest.mark.parametrize("zero", [0, 1, 2])
def test_one_rank_aborting_a_step_skips_it_on_every_rank(tmp_path, zero, monkeypatch):
    # Rank 1's step 2 fails at its first of 2 micro-batches as a non-finite loss would, while rank 0 runs
    # both. Under ZeRO-2 the gradients are reduced inside backward, so the aborted rank must still issue
    # those collectives (zero buckets), or rank 0 waits until dist.timeout_s (20 s here) ends the job.
    # Every stage: exit 0, step 2 skipped everywhere, the other steps applied, and the trajectory after
    # the skip the same for every stage (ZeRO-1's tolerance against data parallel).
    monkeypatch.setenv("SFTGO_TEST_NONFINITE_AT", "1:2")
    out = tmp_path / f"zero{zero}"
    p = train(out, ranks=2, timeout=120, micro=2, extra=[f"dist.zero={zero}", "dist.bucket_mb=0.01"])
    assert "non-finite loss injected by SFTGO_TEST_NONFINITE_AT" in p.stderr + p.stdout
    m = metrics(out)
    assert [x["step"] for x in m] == [1, 2, 3, 4]
    assert [x["skipped"] for x in m] == [False, True, False, False]
    if zero:
        monkeypatch.setenv("SFTGO_TEST_NONFINITE_AT", "1:2")
        ref = tmp_path / "ddp"
        if not ref.exists():
            train(ref, ranks=2, timeout=120, micro=2, extra=["dist.zero=0"])
        for x, y in zip(m, metrics(ref)):
            if not x["skipped"]:
                assert x["loss"] == pytest.approx(y["loss"], rel=1e-5, abs=0)
        assert_close = max(float(np.abs(a - b).max()) for a, b in
                           zip(weights(last_ckpt(out)).values(), weights(last_ckpt(ref)).values()))
        assert assert_close <= ATOL


def adapter(ckpt):
    from safetensors.torch import load_file
    return {k: v.double().numpy() for k, v in load_file(str(ckpt / "adapter" / "adapter_model.safetensors")).items()}


LORA = ["lora.enabled=true", "lora.rank=4"]


# The jobs every sharded stage is checked on besides plain fp32/bf16 (test_zero3_mpirun uses them too).
LORA_CE_RHO1 = pytest.mark.parametrize("job", [
    LORA,
    ["loss.objective=ce"],
    ["grouping.function=rho1", "loss.objective=rho1", "grouping.rho1_reference_model=base"] + LORA,
], ids=["lora", "ce", "rho1"])


@LORA_CE_RHO1
def test_zero2_matches_zero1_lora_ce_rho1(tmp_path, job):
    # 2 micro-batches per rank, so the tolerance of test_zero2_several_micro_batches_match_zero1: ZeRO-2
    # sums over ranks per micro-batch, then micro-batches; ZeRO-1 the other way round: fp32 rounding
    # (~1e-7 relative) that AdamW's m / sqrt(v) can lift to ~lr-size steps on ~0 gradients (ATOL's note).
    # With LoRA only the adapters are sharded and reduced (the base stays frozen and is never
    # reduced): their weights are checked too, and the merged model.safetensors.
    z1, z2 = tmp_path / "z1", tmp_path / "z2"
    train(z1, ranks=2, global_batch=8, micro=2, extra=job + ["dist.zero=1"])
    train(z2, ranks=2, global_batch=8, micro=2, extra=job + ["dist.zero=2", "dist.bucket_mb=0.001"])
    same_run(z1, z2, ATOL, 1e-5, 1e-4)
    if "lora.enabled=true" in job:
        a1, a2 = adapter(last_ckpt(z1)), adapter(last_ckpt(z2))
        assert a1.keys() == a2.keys() and a1
        worst = max(float(np.abs(a1[k] - a2[k]).max()) for k in a1)
        assert worst <= ATOL, f"max abs adapter difference {worst:.3g} > {ATOL:g}"


def test_zero2_four_ranks_equal_one_rank(tmp_path):
    # 4 ranks x 2 examples against 1 process x 8 (one micro-batch each): the same 8 examples per step,
    # summed over ranks in another order, so the tolerance of the 1-vs-2-rank test (ATOL).
    one, four = tmp_path / "one", tmp_path / "four"
    train(one)
    train(four, ranks=4, micro=2, extra=["dist.zero=2", "dist.bucket_mb=0.01"])
    same_run(one, four, ATOL, 1e-5, 1e-4)
