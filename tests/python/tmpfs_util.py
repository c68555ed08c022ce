"""A tmpfs mounted for one test (root only), shared by the disk-full tests of test_reliability and
test_outputs."""
import subprocess

import pytest


def mounted_tmpfs(mnt, options):
    """Mounts a tmpfs with these options at mnt and yields it; skips the test when it cannot."""
    mnt.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
