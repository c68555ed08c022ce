"""Grouping caches scored across ranks (issue 23, item 9): under mpirun with 2 Gloo ranks, each rank of
sftgo-train scores its share of the examples (TF-IDF groups, LLMLingua-2 masks, Rho-1 reference
losses), the shares are merged through part files in data.cache_dir, and the merged cache is
byte-identical to the one a single process writes; training on it gives the same metrics as training
on the single process's cache. Also: a rank killed while the others wait for its share ends the job
(watchdog) instead of hanging it."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from launch_util import free_port, mpirun_cmd

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
PY = sys.executable
MPIRUN = shutil.which("mpirun")
pytestmark = [pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built"),
              pytest.mark.skipif(MPIRUN is None, reason="mpirun (Open MPI) not installed")]


def args(run_dir, cache_dir, steps=2, extra=()):
    a = ["--config", ROOT / "configs/demo_tiny.yaml",
         "--set", f"tokenizer.path={DEMO_TOK}", "--set", "model.vocab_size=1408",
         "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_layers=2",
         "--set", f"run.output_dir={run_dir}", "--set", f"train.max_steps={steps}",
         "--set", f"data.cache_dir={cache_dir}", "--set", "model.device=cpu", "--set", "train.num_threads=1",
         "--set", "train.global_batch_size=8", "--set", "train.micro_batch_size=4",
         "--set", "optim.warmup_ratio=0", "--set", "dist.timeout_s=60"]
    for kv in extra:
        a += ["--set", kv]
    return [str(x) for x in a]


def train(run_dir, cache_dir, ranks=1, extra=(), steps=2):
    cmd = ([str(BIN)] if ranks == 1 else mpirun_cmd(ranks) + [str(BIN)]) + args(run_dir, cache_dir, steps, extra)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, f"exit {p.returncode}\n{p.stdout}\n{p.stderr}"
    return p


def metrics(run_dir):
    return [json.loads(l) for l in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if '"step"' in l]


def caches(cache_dir, prefix):
    """file name -> bytes of the grouping caches (and anything else starting with prefix)."""
    return {p.name: p.read_bytes() for p in Path(cache_dir).glob(prefix + "*")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A Rho-1 reference: the HF checkpoint of a 1-step run of the same tiny model."""
    d = tmp_path_factory.mktemp("ref")
    train(d, "", steps=1)
    return next((d / "checkpoints").glob("step_*"))


@pytest.fixture(scope="module")
def llmlingua2_export(tmp_path_factory):
    pytest.importorskip("transformers")
    base = tmp_path_factory.mktemp("llm2")
    hf, exp = base / "tiny-xlm-roberta-large", base / "export"
    subprocess.run([PY, ROOT / "scripts/make_tiny_llmlingua2.py", hf], check=True, capture_output=True)
    subprocess.run([PY, ROOT / "scripts/export_llmlingua2.py", hf, exp], check=True, capture_output=True)
    return exp


def function_settings(function, request):
    if function == "rho1":
        ref = request.getfixturevalue("reference")
        return ["grouping.function=rho1", f"grouping.rho1_reference_model={ref}", "loss.objective=rho1"], "groups-rho1-ref-"
    if function == "llmlingua2":
        exp = request.getfixturevalue("llmlingua2_export")
        # Batches of 4 windows: the demo data makes several runs of 4 x 512 tokens (the units).
        return ["grouping.function=llmlingua2", f"grouping.llmlingua2_model={exp}",
                "grouping.llmlingua2_device=cpu", "grouping.llmlingua2_batch_size=4"], "groups-llmlingua2-"
    return ["grouping.function=tfidf"], "groups-tfidf-"


@pytest.mark.parametrize("function", ["tfidf", "llmlingua2", "rho1"])
def test_two_ranks_split_the_scoring_into_the_one_process_cache(function, request, tmp_path):
    extra, prefix = function_settings(function, request)
    one_cache, two_cache, reuse_cache = tmp_path / "c1", tmp_path / "c2", tmp_path / "c3"
    train(tmp_path / "one", one_cache, extra=extra)
    two = train(tmp_path / "two", two_cache, ranks=2, extra=extra)
    # Rank 0 scored only its share (the first examples); the others log warnings only, so rank 1's
    # share shows in the merged cache being complete.
    r0 = [l for l in two.stderr.splitlines() if "rank 0/2 computes the" in l]
    assert len(r0) == 1, two.stderr
    end0, total = r0[0].split("of examples [0, ")[1].split(") of ")
    total = total.split()[0]  # Rho-1 adds "(in batch order)": positions in its longest-first order
    assert 0 < int(end0) < int(total), r0
    # The merged cache is the single process's, byte for byte; no part file is left behind.
    one, merged = caches(one_cache, prefix), caches(two_cache, prefix)
    assert len(one) == 1 and one.keys() == merged.keys(), (one.keys(), merged.keys())
    assert next(iter(one.values())) == next(iter(merged.values()))
    assert not list(two_cache.glob("*.part-*"))
    # Training on the merged cache equals training on the single process's cache (the job as it ran
    # before, when rank 0 computed the cache alone), every metric of every step.
    shutil.copytree(one_cache, reuse_cache)
    reuse = train(tmp_path / "reuse", reuse_cache, ranks=2, extra=extra)
    assert "computes the" not in reuse.stderr
    timing = lambda k: k.endswith("_s") or any(w in k for w in ("per_s", "mfu", "rss", "mem", "time"))
    strip = lambda ms: [{k: v for k, v in m.items() if not timing(k)} for m in ms]
    m2, m3 = strip(metrics(tmp_path / "two")), strip(metrics(tmp_path / "reuse"))
    assert len(m2) == 2 and m2 == m3, (m2, m3)


def test_rank_that_fails_its_share_ends_the_job(reference, tmp_path):
    """Rank 1 cannot write its part (a directory stands at its path) and exits with an error naming
    it; rank 0, which did its share and waits for rank 1's part in the cache dir (not in a
    collective), is ended by the heartbeat watchdog about dist.timeout_s later, with a message naming
    rank 1, and no merged cache is written. Ranks started torchrun-style without a launcher, so that
    nothing but sftgo's own watchdog can end rank 0."""
    timeout_s = 5
    extra, prefix = function_settings("rho1", _Request(reference))
    cache = tmp_path / "cache"
    # The cache file name (key) of this data and reference: from a 1-rank run into another dir.
    train(tmp_path / "probe", tmp_path / "probe_cache", extra=extra, steps=1)
    name = next(iter(caches(tmp_path / "probe_cache", prefix)))
    (cache / f"{name}.part-1-of-2").mkdir(parents=True)
    port = free_port()
    procs = []
    for r in range(2):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r), MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port))
        procs.append(subprocess.Popen([str(BIN)] + args(tmp_path / "run", cache, extra=extra + [
            f"dist.timeout_s={timeout_s}"]), env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    try:
        _, err1 = procs[1].communicate(timeout=120)
        t1 = time.time()
        _, err0 = procs[0].communicate(timeout=timeout_s + 60)
        elapsed = time.time() - t1
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert procs[1].returncode == 1, err1
    assert f"rank 1: cannot write its Rho-1 reference losses part {cache / name}.part-1-of-2" in err1, err1
    assert "rank 0/2 did its Rho-1 reference losses share" in err0, err0
    assert procs[0].returncode != 0
    assert elapsed < 2 * timeout_s + 15, elapsed
    assert "rank 1" in err0 and ("no heartbeat" in err0 or "stopped responding" in err0), err0
    assert not (cache / name).exists()


class _Request:
    """function_settings' fixture lookup, for a test that already holds the reference."""
    def __init__(self, reference):
        self.reference = reference

    def getfixturevalue(self, name):
        assert name == "reference"
        return self.reference
