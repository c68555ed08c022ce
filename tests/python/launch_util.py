"""Launch helpers shared by the multi-process tests: a free TCP port and an mpirun command line."""
import os
import shutil
import socket

MPIRUN = shutil.which("mpirun")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mpirun_cmd(n):
    """mpirun for n local ranks with a fresh rendezvous port (root needs --allow-run-as-root)."""
    cmd = [MPIRUN, "-np", str(n), "--oversubscribe", "-x", f"MASTER_PORT={free_port()}", "-x", "MASTER_ADDR=127.0.0.1"]
    if os.geteuid() == 0:
        cmd.insert(1, "--allow-run-as-root")
    return cmd
