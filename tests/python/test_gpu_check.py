"""The GPU check kit (issues 15 and 23) and the NCCL build checks, on a machine without a GPU:
scripts/gpu_check.sh runs every check it can on the CPU and marks the CUDA ones "skipped (no GPU)",
exiting 0, and leaves only summary.md, results.json and logs.tar.gz in --out; a training run that
fails after some steps still reports them; --plan lists the same slots the budget logic uses; the
bundle (binaries behind wrappers that give the bundle's libraries to them alone, the peers' wheels)
fits its limit; the configure-time NCCL decision (cmake/SftgoNccl.cmake, run as a CMake script on fake
headers); `sftgo-train --version` naming the NCCL compiled in."""
import os
import re
import json
import shutil
import subprocess
import sys
import tarfile
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

KIT = ROOT / "scripts" / "gpu_check.sh"
PLAN_IDS = ["env", "loss_cuda", "nccl", "sftgo_3b", "lora_8b", "loss_sftgo", "loss_peers", "train_peer", "score",
            "trainer", "resume", "grouping", "sanitizer", "finish"]


def run_kit(out, *args, env=None, timeout=900):
    e = dict(os.environ, SFTGO_BUILD_DIR=str(BUILD), SFTGO_PYTHON=sys.executable)
    e.update(env or {})
    return subprocess.run(["bash", str(KIT), "--out", str(out), *args], capture_output=True, text=True, cwd=ROOT,
                          env=e, timeout=timeout)


def summary_rows(summary):
    """The table of summary.md as {check: (result, value, bound, notes)}, as a person reads it."""
    rows = {}
    for line in summary.splitlines():
        if not line.startswith("| "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0] not in ("check", "---"):
            rows[cells[0]] = cells[1:]
    return rows


def check_out_dir(out):
    """--out holds the kit's three files only: at most 8, at most two folders deep, each under 16 MiB."""
    files = [p for p in out.rglob("*")]
    assert sorted(p.name for p in files) == ["logs.tar.gz", "results.json", "summary.md"], files
    assert len(files) <= 8
    for p in files:
        assert p.is_file() and len(p.relative_to(out).parts) <= 3 and p.stat().st_size < 16 * 2**20, p
    with tarfile.open(out / "logs.tar.gz") as tar:
        return {m.name: m for m in tar.getmembers()}, tar


@pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
def test_gpu_check_runs_on_cpu_and_skips_the_cuda_checks(tmp_path):
    if has_gpu():
        pytest.skip("a GPU is visible: run scripts/gpu_check.sh itself")
    out, scratch = tmp_path / "kit", tmp_path / "scratch"
    scratch.mkdir()
    p = run_kit(out, env={"TMPDIR": str(scratch)})
    summary = (out / "summary.md").read_text()
    assert p.returncode == 0, summary + p.stderr[-3000:]
    assert list(scratch.iterdir()) == [], "the scratch folder was not removed"
    rows = summary_rows(summary)
    assert not [r for r in rows.values() if r[0] == "FAIL"], summary
    assert all(r[2] not in ("", "-") for r in rows.values()), "every row names the bound it was held to"
    for name in ["loss CUDA fp32 vs fp64 CPU", "loss CUDA bf16 vs fp64 CPU", "NCCL world-1 collectives",
                 "SFT-GO llama3.2-3b shape, seq 4096, scope step", "SFT-GO llama3.2-3b shape, seq 4096, scope microbatch",
                 "loss.scope step / microbatch step time", "LoRA llama3.1-8b shape, seq 4096, one GPU",
                 "3B training step: sftgo (scope microbatch) / transformers loop", "score cuda float32 vs transformers",
                 "score cuda bfloat16 vs transformers", "compute-sanitizer memcheck", "compute-sanitizer racecheck"]:
        assert rows[name][0] == "skipped (no GPU)", (name, summary)
    # The CPU legs ran and gave numbers.
    assert rows["environment"][0] == "pass" and "sftgo NCCL" in rows["environment"][1], summary
    shape = "loss 64x32x1000 fp32 CPU smoke"
    for variant in ("sftgo fused sftgo auto*", "sftgo fused ce auto", "eager CE"):
        assert rows[f"{shape}: {variant}"][0] == "pass", summary
        assert re.match(r"\d+\.\d+ ms; \d+\.\d+x eager time", rows[f"{shape}: {variant}"][1]), summary
    for peer in ("Liger FLCE", "cut-cross-entropy"):
        assert rows[f"{shape}: {peer}"][0].startswith("skipped ("), summary
    assert rows["transformers loop (CPU smoke)"][0] == "pass", summary
    assert rows["score cpu float32 vs transformers"][0] == "pass", summary
    for leg, what in (("plain", "fp32"), ("fp32_master", "bf16"), ("zero1", "fp32"), ("zero3", "fp32"),
                      ("zero3_offload", "fp32")):
        r = rows[f"train {leg}: CUDA {what} vs CPU {what}"]
        assert r[0] == "skipped (no GPU)" and re.fullmatch(r"CPU losses \d+\.\d+, \d+\.\d+, \d+\.\d+", r[1]), summary
    for name in ("train ZeRO-1 (world 1) vs plain updater, cpu", "train bf16 fp32-master vs fp32, cpu",
                 "train ZeRO-3 (world 1) vs ZeRO-1, cpu", "train ZeRO-3 offload vs on-device state, cpu"):
        assert rows[name][0] == "pass" and rows[name][1].startswith("3 steps; loss rel max"), summary
    resume = rows["train save at step 2 + resume to 4 (cpu)"]
    assert resume[0] == "pass" and "steps [3, 4]" in resume[1] and "bit-identical" in resume[1], summary
    assert rows["LLMLingua-2 masks and scores, CUDA vs CPU"][1].startswith("CPU leg: "), summary
    assert rows["Rho-1 reference losses, CUDA vs CPU"][1].startswith("CPU leg: "), summary
    # What comes back: three files; the archive holds every log and every run's metrics.
    members, _ = check_out_dir(out)
    for name in ("logs/version.log", "logs/train_plain_cpu.log", "logs/metrics/plain_cpu.jsonl",
                 "logs/metrics/resume_part.jsonl", "logs/loss_peers.json", "logs/summary.md"):
        assert name in members, sorted(members)
    data = json.loads((out / "results.json").read_text())
    assert {r["check"] for r in data["rows"]} == set(rows) and data["counts"]["FAIL"] == 0


FAKE_TRAIN = r"""#!/bin/bash
# A sftgo-train that writes two steps of metrics.jsonl, then fails: what a run killed or crashing at step 3 leaves.
case "$1" in --version) printf 'sftgo-train 0.0 (fake)\nNCCL: none\n'; exit 0 ;; config) exit 0 ;; esac
out=""
for a in "$@"; do case $a in run.output_dir=*) out=${a#run.output_dir=} ;; esac; done
[ -n "$out" ] || exit 2
mkdir -p "$out"
for s in 1 2; do echo "{\"step\": $s, \"loss\": 7.$s, \"grad_norm\": 1.0, \"tokens_per_s\": 100.0, \"step_s\": 0.5}" >> "$out/metrics.jsonl"; done
printf '{"step": 3, "lo' >> "$out/metrics.jsonl"
echo "error: simulated failure at step 3" >&2
exit 1
"""


def test_gpu_check_reports_the_steps_of_a_run_that_failed(tmp_path):
    # Issue 23 item 1: the numbers of a run are read whatever its exit code.
    fake = tmp_path / "build" / "bin"
    fake.mkdir(parents=True)
    (fake / "sftgo-train").write_text(FAKE_TRAIN)
    (fake / "sftgo-train").chmod(0o755)
    out = tmp_path / "kit"
    p = run_kit(out, "--quick", env={"SFTGO_BUILD_DIR": str(tmp_path / "build"), "SFTGO_BUNDLE": str(tmp_path / "none")},
                timeout=600)
    summary = (out / "summary.md").read_text()
    assert p.returncode == 1, summary  # the failed runs are FAIL rows
    rows = summary_rows(summary)
    r = rows["train plain (CPU leg)"]
    assert r[0] == "FAIL" and r[1].startswith("2 steps, step 0.50 s, 100 tokens/s") and r[1].endswith("exit 1"), summary
    check_out_dir(out)


def test_gpu_check_plan_lists_the_slots_the_budget_uses(tmp_path):
    p = subprocess.run(["bash", str(KIT), "--plan"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    slots = {}
    for line in p.stdout.splitlines():
        m = re.match(r"\s*(\d+)\s+(\w+)\s+(\d+)\s+(\d+)\s+\S", line)
        if m:
            slots[m.group(2)] = int(m.group(3))
    assert list(slots) == PLAN_IDS, p.stdout
    total = int(re.search(r"^total: (\d+) s \(budget 450 s\)$", p.stdout, re.M).group(1))
    assert total == sum(slots.values()) and total <= 450, p.stdout
    text = KIT.read_text()
    for check in PLAN_IDS[:-1]:
        assert re.search(rf"^check_{check}\(\) {{", text, re.M), check  # each planned check exists
    # The budget logic reads the same table: with 20 s and slot scale 1, the env check (5 s) runs, the
    # 85 s 3B check would not fit (on a CPU it records its "no GPU" row before asking), and the
    # trainer check is skipped naming its slot.
    out = tmp_path / "kit"
    r = run_kit(out, "--quick", "--budget", "20", "--slot-scale", "1", timeout=300)
    rows = summary_rows((out / "summary.md").read_text())
    assert rows["environment"][0] == "pass", rows
    assert rows["trainer"] == ["skipped (time budget)", "-", f"slot {slots['trainer']} s", rows["trainer"][3]], rows
    assert rows["resume"][2] == f"slot {slots['resume']} s", rows
    check_out_dir(out)
    # A bad command line is exit 2, and --out must not hold someone else's files.
    assert subprocess.run(["bash", str(KIT), "--budget", "soon"], capture_output=True, cwd=ROOT).returncode == 2
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    b = subprocess.run(["bash", str(KIT), "--out", str(tmp_path / "busy")], capture_output=True, text=True, cwd=ROOT)
    assert b.returncode == 2 and "notes.txt" in b.stderr and (tmp_path / "busy" / "notes.txt").exists()


def test_loss_peers_and_train_peer_smoke():
    # bench/gpu's Python side in its CPU smoke mode: the eager leg is checked against fp32 and timed; the
    # Triton peers say why they are skipped; the transformers loop trains and reports tokens/s.
    p = subprocess.run([sys.executable, str(ROOT / "bench/gpu/loss_peers.py"), "--smoke"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    r = json.loads(p.stdout)
    eager = r["variants"]["eager CE"]
    assert eager["ok"] and eager["ms"] > 0 and r["gemm"]["tflops"] > 0 and r["limit_ms"] > 0
    for peer in ("Liger FLCE", "cut-cross-entropy"):
        assert "skipped" in r["variants"][peer], r
    p = subprocess.run([sys.executable, str(ROOT / "bench/gpu/train_peer.py"), "--smoke"], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    t = json.loads(p.stdout)
    assert t["tokens_per_s"] > 0 and len(t["step_s"]) == 3 and t["last_loss"] < t["first_loss"], t


@pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
def test_gpu_bundle_wraps_its_libraries_and_carries_the_peers(tmp_path):
    version = subprocess.run([str(BIN), "--version"], capture_output=True, text=True).stdout
    if "CUDA kernels: on" not in version:
        pytest.skip("not a CUDA build: no bundle to make")
    for b in ("test_loss", "test_dist", "bench_loss"):
        if not (BUILD / "bin" / b).exists():
            pytest.skip(f"{b} not built")
    out = tmp_path / "bundle"
    p = subprocess.run(["bash", str(ROOT / "scripts/gpu_bundle.sh"), "--no-build", "--build", str(BUILD), "--out",
                        str(out)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    if p.returncode != 0 and "pip download" in p.stderr:
        pytest.skip("no network for pip download: " + p.stderr[-300:])
    assert p.returncode == 0, p.stderr[-3000:]
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    assert total <= 40 * 2**20, total
    manifest = (out / "MANIFEST.txt").read_text()
    assert "needs: glibc >= 2." in manifest and "NCCL: " in manifest
    archs = re.search(r"^CUDA kernels built for: (.*)$", manifest, re.M).group(1)
    if "cuobjdump" in archs and "no cuobjdump" not in archs:
        assert archs.split("(")[0].split() == ["sm_80", "sm_90", "sm_100"], archs
    wheels = sorted(f.name for f in (out / "wheels").iterdir())
    assert [w.split("-")[0] for w in wheels] == ["cut_cross_entropy", "liger_kernel"], wheels
    assert all(w.endswith("-py3-none-any.whl") for w in wheels), wheels
    libs = {f.name for f in (out / "lib").iterdir()}
    assert any(n.startswith("libsentencepiece") for n in libs) and "libstdc++.so.6" in libs, libs
    assert not any(n.startswith(("libtorch", "libc10", "libc.so", "libcuda.so")) for n in libs), libs
    # bin/ holds wrappers: the real binary loads the bundle's libstdc++, the caller's environment keeps none of it.
    import torch
    torch_lib = str(Path(torch.__file__).parent / "lib")
    wrapper = out / "bin" / "sftgo-train"
    assert wrapper.read_text().startswith("#!/bin/sh")
    env = dict(os.environ, SFTGO_TORCH_LIB=torch_lib, LD_DEBUG="libs")
    env.pop("LD_LIBRARY_PATH", None)
    r = subprocess.run([str(wrapper), "--version"], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "CUDA kernels: on" in r.stdout, r.stderr[-2000:]
    assert re.search(rf"calling init: {re.escape(str(out))}/lib/libstdc\+\+\.so\.6", r.stderr), r.stderr[-2000:]
    # The kit with this bundle: sftgo-train runs through the wrapper, python loads its own libstdc++.
    kit = tmp_path / "kit"
    k = run_kit(kit, "--quick", "--budget", "30", "--slot-scale", "1", env={"SFTGO_BUNDLE": str(out)}, timeout=300)
    data = json.loads((kit / "results.json").read_text())
    env_row = [r for r in data["rows"] if r["check"] == "environment"][0]
    assert env_row["result"] == "pass" and f"bundle {out}" in data["title"], (env_row, k.stderr[-2000:])
    assert data["env"]["python_libstdcxx"] and not any(str(out) in p for p in data["env"]["python_libstdcxx"]), data["env"]
    assert str(out) not in data["env"]["ld_library_path"], data["env"]
