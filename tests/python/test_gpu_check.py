"""The GPU check kit and the NCCL build checks (issue 15), on a machine without a GPU:
scripts/gpu_check.sh runs every check it can on the CPU and marks the CUDA ones "skipped (no GPU)",
exiting 0; the configure-time NCCL decision (cmake/SftgoNccl.cmake, run as a CMake script on fake
headers); `sftgo-train --version` naming the NCCL compiled in; and the bundle for the GPU machine
fitting its 60 MB."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
CMAKE = shutil.which("cmake")
NCCL_SCRIPT = ROOT / "cmake" / "SftgoNccl.cmake"


def has_gpu():
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:
        return False


def torch_nccl():
    torch = pytest.importorskip("torch")
    return ".".join(map(str, torch.cuda.nccl.version()))


# ---- configure-time NCCL check ---------------------------------------------------------------------------

def fake_nccl(dir_, major, minor, patch):
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / "nccl.h").write_text(f"#ifndef NCCL_H_\n#define NCCL_H_\n#define NCCL_MAJOR {major}\n"
                                 f"#define NCCL_MINOR {minor}\n#define NCCL_PATCH {patch}\n#define NCCL_SUFFIX \"\"\n#endif\n")
    return dir_


def nccl_check(include_dir, expected):
    return subprocess.run([CMAKE, f"-DNCCL_INCLUDE_DIR={include_dir}", f"-DNCCL_EXPECTED_VERSION={expected}", "-P",
                           str(NCCL_SCRIPT)], capture_output=True, text=True)


@pytest.mark.skipif(CMAKE is None, reason="cmake not installed")
def test_nccl_configure_check_accepts_the_same_version(tmp_path):
    p = nccl_check(fake_nccl(tmp_path / "inc", 2, 28, 9), "2.28.9")
    assert p.returncode == 0, p.stderr
    assert "sftgo: NCCL 2.28.9 from" in p.stderr


@pytest.mark.skipif(CMAKE is None, reason="cmake not installed")
def test_nccl_configure_check_stops_on_another_version_or_none(tmp_path):
    p = nccl_check(fake_nccl(tmp_path / "inc", 2, 27, 3), "2.28.9")
    assert p.returncode != 0
    assert "is NCCL 2.27.3 but the torch wheel loads NCCL 2.28.9" in " ".join(p.stderr.split()), p.stderr
    p = nccl_check(tmp_path / "nowhere", "2.28.9")
    assert p.returncode != 0 and "nccl.h was not found" in " ".join(p.stderr.split()), p.stderr
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "nccl.h").write_text("#define NCCL_MAJOR 2\n")
    p = nccl_check(bad, "2.28.9")
    assert p.returncode != 0 and "no NCCL_MAJOR/NCCL_MINOR/NCCL_PATCH" in " ".join(p.stderr.split()), p.stderr
    p = nccl_check(fake_nccl(tmp_path / "inc2", 2, 28, 9), "")
    assert p.returncode != 0 and "torch.cuda.nccl.version()" in " ".join(p.stderr.split()), p.stderr


@pytest.mark.skipif(CMAKE is None, reason="cmake not installed")
def test_the_wheel_ships_headers_of_the_nccl_it_loads():
    # The default the build uses: site-packages/nvidia/nccl/include beside torch.
    torch = pytest.importorskip("torch")
    inc = Path(torch.__file__).parent.parent / "nvidia" / "nccl" / "include"
    if not (inc / "nccl.h").exists():
        pytest.skip(f"{inc} has no nccl.h (not a CUDA wheel)")
    p = nccl_check(inc, torch_nccl())
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
def test_version_names_the_nccl_compiled_in():
    out = subprocess.run([str(BIN), "--version"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^NCCL: (\S+)$", out, re.M)
    assert m, out
    if "CUDA kernels: on" in out:
        assert m.group(1) == torch_nccl(), out  # a CUDA build: the wheel's NCCL, checked at configure time
    else:
        assert m.group(1) == "none", out


# ---- the kit -------------------------------------------------------------------------------------------

@pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
def test_gpu_check_runs_on_cpu_and_skips_the_cuda_checks(tmp_path):
    if has_gpu():
        pytest.skip("a GPU is visible: run scripts/gpu_check.sh itself")
    out = tmp_path / "kit"
    env = dict(os.environ, SFTGO_BUILD_DIR=str(BUILD), SFTGO_PYTHON=sys.executable)
    p = subprocess.run(["bash", str(ROOT / "scripts/gpu_check.sh"), "--quick", "--out", str(out)],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    summary = (out / "summary.md").read_text()
    assert p.returncode == 0, summary + p.stderr[-3000:]
    rows = {}
    for line in summary.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("check", "---"):
            rows[cells[0]] = cells
    for name in ["loss CUDA fp32 vs fp64 CPU", "loss CUDA bf16 vs fp64 CPU", "compute-sanitizer memcheck",
                 "compute-sanitizer racecheck", "loss bench CUDA bf16", "score cuda float32 vs transformers",
                 "score cuda bfloat16 vs transformers", "train fp32 CUDA vs CPU", "llama3.2-3b shape, seq 4096",
                 "NCCL world-1 collectives"]:
        assert name in rows and rows[name][1] == "skipped (no GPU)", (name, summary)
    # The CPU legs really ran and produced numbers.
    assert rows["environment"][1] == "pass" and "sftgo NCCL" in rows["environment"][2], summary
    assert rows["loss bench CPU smoke"][1] == "pass" and "fused sftgo auto*" in rows["loss bench CPU smoke"][2], summary
    assert rows["score cpu float32 vs transformers"][1] == "pass", summary
    assert re.search(r"CPU step-1 loss \d+\.\d+", rows["train fp32 CUDA vs CPU"][2]), summary
    assert " 0 FAIL" in summary
    assert (out / "logs" / "version.log").read_text().startswith("sftgo-train")


@pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
def test_gpu_bundle_fits_60_mb(tmp_path):
    version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout
    if "CUDA kernels: on" not in version:
        pytest.skip("not a CUDA build: no bundle to make")
    for b in ("test_loss", "test_dist", "bench_loss"):
        if not (BUILD / "bin" / b).exists():
            pytest.skip(f"{b} not built")
    out = tmp_path / "bundle"
    p = subprocess.run(["bash", str(ROOT / "scripts/gpu_bundle.sh"), "--no-build", "--build", str(BUILD), "--out",
                        str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert total <= 60 * 2**20, total
    manifest = (out / "MANIFEST.txt").read_text()
    assert "needs: glibc >= 2." in manifest and "NCCL: " in manifest
    libs = {f.name for f in (out / "lib").iterdir()}
    assert any(n.startswith("libsentencepiece") for n in libs), libs
    assert not any(n.startswith(("libtorch", "libc10", "libc.so", "libcuda.so")) for n in libs), libs
