"""Several hosts (issue 15, item 9): a job whose ranks are not all on this host must not rendezvous
at the default 127.0.0.1. Two real ranks under mpirun with a faked OMPI_COMM_WORLD_LOCAL_SIZE=1 (as
on two one-rank hosts) and no MASTER_ADDR stop at once, before any rendezvous, with an error saying
what to set; with MASTER_ADDR given the same job trains. A srun-style environment (two ranks, two
nodes) finds rank 0's host in SLURM_STEP_NODELIST. The parsing itself is unit-tested in tests/dist."""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_util import free_port

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def args(run_dir):
    a = ["--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
         "--set", "model.vocab_size=1408", "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64",
         "--set", "model.num_layers=2", "--set", f"run.output_dir={run_dir}", "--set", "train.max_steps=1",
         "--set", "data.cache_dir=", "--set", "model.device=cpu", "--set", "train.num_threads=1",
         "--set", "train.global_batch_size=4", "--set", "train.micro_batch_size=2", "--set", "dist.timeout_s=20"]
    return [str(x) for x in a]


def mpirun(*extra):
    cmd = [MPIRUN, "-np", "2", "--oversubscribe", *extra]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd


@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")
def test_mpirun_across_hosts_without_master_addr_stops_at_once(tmp_path):
    # `env` between mpirun and the binary overrides the local size mpirun set: each rank believes it
    # is alone on its host, as with one rank per node.
    t0 = time.monotonic()
    p = subprocess.run(mpirun("-x", f"MASTER_PORT={free_port()}") + ["env", "-u", "MASTER_ADDR",
                       "OMPI_COMM_WORLD_LOCAL_SIZE=1", "OMPI_COMM_WORLD_LOCAL_RANK=0", str(BIN)] + args(tmp_path / "r"),
                       capture_output=True, text=True, cwd=ROOT, timeout=120)
    took = time.monotonic() - t0
    assert p.returncode != 0
    err = p.stderr
    assert "job spans several hosts (1 of its 2 ranks on this host, OMPI_COMM_WORLD_LOCAL_SIZE)" in err, err
    assert "MASTER_ADDR is not set" in err and "mpirun -x MASTER_ADDR=" in err, err
    # At once: no rendezvous attempt, no dist.timeout_s (20 s) wait.
    assert took < 20, took
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")
def test_mpirun_across_hosts_with_master_addr_trains(tmp_path):
    p = subprocess.run(mpirun("-x", f"MASTER_PORT={free_port()}", "-x", "MASTER_ADDR=127.0.0.1") +
                       ["env", "OMPI_COMM_WORLD_LOCAL_SIZE=1", "OMPI_COMM_WORLD_LOCAL_RANK=0", str(BIN)] +
                       args(tmp_path / "r"), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / "metrics.jsonl").read_text().strip()


def test_srun_environment_finds_rank0_host_from_the_node_list(tmp_path):
    # Two srun-style ranks started from here on "two nodes" whose node list names this machine first
    # (localhost): rank 0's address comes from SLURM_STEP_NODELIST, no MASTER_ADDR needed.
    port = free_port()
    procs = []
    for rank in range(2):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "SLURM_"))}
        env.pop("MASTER_ADDR", None)
        env.update(SLURM_PROCID=str(rank), SLURM_STEP_NUM_TASKS="2", SLURM_LOCALID="0", SLURM_NODEID=str(rank),
                   SLURM_STEP_NUM_NODES="2", SLURM_STEP_TASKS_PER_NODE="1(x2)", SLURM_STEP_NODELIST="localhost",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([str(BIN)] + args(tmp_path / "r") + ["--set", "dist.master_addr=127.0.0.1"],
                                      env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err
    assert "rendezvous localhost:" in outs[0][1], outs[0][1]


# docs/gpu.md's several-node commands, with one host standing in for the nodes.
@pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")
def test_documented_mpirun_hostfile_command_trains(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost slots=2\n")
    p = subprocess.run(mpirun("--hostfile", str(hosts), "-npernode", "2", "--mca", "odls_base_sigkill_timeout", "120",
                              "-x", "MASTER_ADDR=127.0.0.1", "-x", f"MASTER_PORT={free_port()}") + [str(BIN)] +
                       args(tmp_path / "r"), capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stderr
    assert "final loss" in p.stderr + p.stdout


def test_documented_torchrun_rendezvous_command_trains(tmp_path):
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun not installed next to this python")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI_", "SLURM_", "MASTER_"))}
    p = subprocess.run([str(torchrun), "--no-python", "--nnodes", "1", "--nproc-per-node", "2", "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", f"127.0.0.1:{free_port()}", str(BIN)] + args(tmp_path / "r"),
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "r" / "metrics.jsonl").read_text().strip()
