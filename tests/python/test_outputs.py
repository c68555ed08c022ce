"""Outputs never destroy what is not theirs (issue 25, items 1-4, 6, 10).

Every command's output path follows one rule (sftgo/core/files.h, docs/operations.md "Output files"):
a regular file (or nothing) is replaced atomically; an existing device, FIFO or terminal is written
through, never renamed over; /dev/full fails with ENOSPC. `lora-merge --out` never replaces its own
inputs, the current directory or a file. Adapters are checked against their tensors before anything is
allocated, and weights must be finite. Command-line values are checked (exit 2).

Device nodes are made here with mknod (root) as copies of /dev/null and /dev/full, so a regression
can never replace the machine's own /dev/null.
"""
import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from tmpfs_util import mounted_tmpfs

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
DEMO_DATA = ROOT / "data" / "demo" / "demo_sft.jsonl"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def run(*args, cwd=ROOT, timeout=300):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def expect(p, code, *needles):
    """Exit `code` (never 3, never a crash) and every needle in stderr."""
    assert p.returncode != 3 and "internal error" not in p.stderr, p.stderr[-3000:]
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\n{p.stderr[-3000:]}"
    for n in needles:
        assert str(n) in p.stderr, f"{n!r} not in stderr:\n{p.stderr[-3000:]}"
    return p


def listing(d):
    return sorted((str(p.relative_to(d)), p.stat().st_size) for p in Path(d).rglob("*"))


# ---- fixtures: a tiny model with the demo tokenizer, a PEFT-layout adapter, eval data ------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                   rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=None,
                                   eos_token_id=None)
    out = tmp_path_factory.mktemp("model") / "tiny"
    transformers.LlamaForCausalLM(cfg).save_pretrained(out, safe_serialization=True)
    for f in DEMO_TOK.iterdir():
        shutil.copy(f, out / f.name)
    return out


def make_adapter(dst, r=2, alpha=4.0, edit=None, rank_in_config=None):
    """A PEFT-layout adapter on q_proj/v_proj of the tiny model (q [32, 32], v [16, 32]), random B.
    `edit(tensors)` changes the tensors; `rank_in_config` overrides adapter_config.json's r."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for layer in range(2):
        for proj, out in (("q_proj", 32), ("v_proj", 16)):
            p = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
            tensors[f"{p}.lora_A.weight"] = torch.randn(r, 32, generator=g) * 0.1
            tensors[f"{p}.lora_B.weight"] = torch.randn(out, r, generator=g) * 0.1
    if edit:
        edit(tensors)
    dst.mkdir(parents=True)
    save_file(tensors, str(dst / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r if rank_in_config is None else rank_in_config,
           "lora_alpha": alpha, "lora_dropout": 0.0, "target_modules": ["q_proj", "v_proj"], "bias": "none"}
    (dst / "adapter_config.json").write_text(json.dumps(cfg))
    return dst


@pytest.fixture(scope="module")
def adapter(tmp_path_factory):
    return make_adapter(tmp_path_factory.mktemp("adapter") / "ad")


@pytest.fixture
def ids(tmp_path):
    p = tmp_path / "ids.jsonl"
    p.write_text('{"ids": [1, 2, 3, 4, 5]}\n{"ids": [7, 8, 9]}\n')
    return p


@pytest.fixture
def arc(tmp_path):
    p = tmp_path / "arc.jsonl"
    p.write_text("".join(json.dumps({"question": f"Which is a fruit {i}?", "answerKey": "A",
                                     "choices": {"text": ["apple", "stone"], "label": ["A", "B"]}}) + "\n"
                         for i in range(3)))
    return p


def data_config(tmp_path):
    data = tmp_path / "data.jsonl"  # the first 20 demo conversations
    data.write_text("".join(DEMO_DATA.read_text().splitlines(keepends=True)[:20]))
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"tokenizer:\n  path: {DEMO_TOK}\ndata:\n  path: {data}\n  cache_dir: ''\n"
                   "  max_seq_len: 64\n")
    return cfg


def device_node(path, minor):
    """A character device like /dev/null (1, 3) or /dev/full (1, 7) at `path`; skips without root."""
    try:
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        with open(path, "wb") as f:
            f.write(b"")
    except OSError as e:
        pytest.skip(f"cannot make a device node here: {e}")
    return path


def is_char_device(path):
    return stat.S_ISCHR(os.lstat(path).st_mode)


def output_commands(tmp_path, model_dir, ids, arc, out):
    """(name, argv) of every command that writes a file the user names, all writing `out`."""
    cfg = data_config(tmp_path)
    return [
        ("data --convert", ["data", "--config", cfg, "--convert", out]),
        ("score --out", ["score", "--model", model_dir, "--data", ids, "--device", "cpu", "--out", out]),
        ("eval --out", ["eval", "--model", model_dir, "--task", "arc_easy", "--data", arc, "--device", "cpu",
                        "--out", out]),
        ("eval --samples", ["eval", "--model", model_dir, "--task", "arc_easy", "--data", arc, "--device", "cpu",
                            "--samples", out]),
        ("groups --jsonl", ["groups", "--config", cfg, "--set", "grouping.function=tfidf", "--show", "0",
                            "--jsonl", out]),
        ("groups --html", ["groups", "--config", cfg, "--set", "grouping.function=tfidf", "--show", "0",
                           "--html", out]),
    ]


@pytest.fixture(scope="module")
def plot_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("plotrun")
    (d / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss_ce": 3.0 - 0.1 * s}) + "\n"
                                             for s in range(1, 6)))
    return d


# ---- 1. outputs that are devices or FIFOs are written through, never replaced ---------------------------

def test_every_output_writes_through_a_null_device(tmp_path, model_dir, ids, arc, plot_run):
    null = device_node(tmp_path / "null.svg", 3)  # .svg so that plot -o accepts it too
    cmds = output_commands(tmp_path, model_dir, ids, arc, null) + [("plot -o", ["plot", plot_run, "-o", null])]
    for name, argv in cmds:
        p = run(*argv)
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert is_char_device(null), f"{name} replaced the device node with a regular file"
        assert not list(tmp_path.glob("null.svg.tmp*")), name


def test_every_output_to_a_full_device_is_enospc(tmp_path, model_dir, ids, arc, plot_run):
    full = device_node(tmp_path / "full.svg", 7)
    cmds = output_commands(tmp_path, model_dir, ids, arc, full) + [("plot -o", ["plot", plot_run, "-o", full])]
    for name, argv in cmds:
        p = run(*argv)
        assert p.returncode == 1, f"{name}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert "No space left on device" in p.stderr and str(full) in p.stderr, f"{name}: {p.stderr[-2000:]}"
        assert is_char_device(full), f"{name} replaced the device node with a regular file"


def test_outputs_to_a_fifo_reach_the_reader(tmp_path, model_dir, ids, arc, plot_run):
    fifo = tmp_path / "pipe.svg"
    os.mkfifo(fifo)
    cmds = output_commands(tmp_path, model_dir, ids, arc, fifo) + [("plot -o", ["plot", plot_run, "-o", fifo])]
    for name, argv in cmds:
        got = []
        reader = threading.Thread(target=lambda: got.append(Path(fifo).read_bytes()), daemon=True)
        reader.start()
        p = run(*argv, timeout=120)
        reader.join(30)
        assert p.returncode == 0, f"{name}: exit {p.returncode}\n{p.stderr[-2000:]}"
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), f"{name} replaced the FIFO"
        assert got and len(got[0]) > 0, f"{name}: the reader got nothing"
    # What came through the FIFO is the whole output: score's lines parse and are complete.
    got = []
    reader = threading.Thread(target=lambda: got.append(Path(fifo).read_text()), daemon=True)
    reader.start()
    expect(run("score", "--model", model_dir, "--data", ids, "--device", "cpu", "--out", fifo), 0)
    reader.join(30)
    lines = [json.loads(l) for l in got[0].splitlines()]
    assert [len(l["logprobs"]) for l in lines] == [4, 2]


def test_a_link_to_a_regular_file_replaces_the_file_not_the_link(tmp_path, model_dir, ids):
    target = tmp_path / "real.jsonl"
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    expect(run("score", "--model", model_dir, "--data", ids, "--device", "cpu", "--out", link), 0)
    assert link.is_symlink() and len(target.read_text().splitlines()) == 2
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_lora_merge_refuses_a_device_as_out(tmp_path, model_dir, adapter):
    null = device_node(tmp_path / "null", 3)
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", null), 2, "not a directory")
    assert is_char_device(null)


# ---- 6. a full disk: exit 1 with the OS reason, nothing partial left --------------------------------------

@pytest.fixture
def full_disk(tmp_path):
    """A tmpfs of 64 KiB, filled up: every write there fails with ENOSPC."""
    for mnt in mounted_tmpfs(tmp_path / "disk", "size=64k"):
        try:
            with open(mnt / "filler", "wb") as f:
                f.write(b"\0" * (1 << 20))
        except OSError:
            pass
        yield mnt


def test_eval_samples_and_score_out_on_a_full_disk(full_disk, model_dir, ids, arc):
    samples = full_disk / "samples.jsonl"
    p = run("eval", "--model", model_dir, "--task", "arc_easy", "--data", arc, "--device", "cpu", "--samples", samples)
    expect(p, 1, "No space left on device", "samples.jsonl")
    out = full_disk / "s.jsonl"
    p = run("score", "--model", model_dir, "--data", ids, "--device", "cpu", "--out", out)
    expect(p, 1, "No space left on device", "s.jsonl")
    assert sorted(x.name for x in full_disk.iterdir()) == ["filler"]  # no 0-byte file, no .tmp


# ---- 2. lora-merge --out never replaces its own inputs -----------------------------------------------------

@pytest.fixture
def run_dir(tmp_path, model_dir, adapter):
    """A run directory holding the base model and an adapter checkpoint, as a user would have it."""
    d = tmp_path / "run"
    shutil.copytree(model_dir, d / "base")
    shutil.copytree(adapter, d / "checkpoints" / "step_00000003" / "adapter")
    return d


@pytest.mark.parametrize("out", ["base", ".", "base/merged", "checkpoints/step_00000003/adapter",
                                 "checkpoints/step_00000003/adapter/x", "checkpoints", "link_to_base"])
def test_lora_merge_refuses_an_out_that_is_contains_or_lies_inside_an_input(run_dir, out):
    (run_dir / "link_to_base").symlink_to(run_dir / "base")
    before = listing(run_dir)
    p = run("lora-merge", "--model", "base", "--adapter", "checkpoints/step_00000003/adapter", "--out", out,
            cwd=run_dir)
    expect(p, 2, "--out")
    assert listing(run_dir) == before


def test_lora_merge_refuses_the_current_directory_and_a_regular_file(tmp_path, model_dir, adapter):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", ".", cwd=work), 2,
           "current directory")
    assert [p.name for p in work.iterdir()] == ["notes.txt"]
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    f = tmp_path / "file"
    f.write_text("x")
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", f), 2, "not a directory")
    assert f.read_text() == "x"
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", work), 2, "no config.json")
    assert [p.name for p in work.iterdir()] == ["notes.txt"]


def test_lora_merge_removes_what_a_killed_merge_left(tmp_path, model_dir, adapter):
    out = tmp_path / "merged"
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    dead = next(p for p in range(pid_max - 1, 1, -1) if not Path(f"/proc/{p}").exists())
    stale = tmp_path / f"merged.tmp-{dead}"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1000)
    alive = tmp_path / f"merged.tmp-{os.getpid()}"  # a merge still running (this process) is left alone
    alive.mkdir()
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", out), 0)
    assert not stale.exists() and alive.exists() and (out / "config.json").exists()
    # Merging again replaces the earlier merge (a checkpoint directory) as a whole.
    expect(run("lora-merge", "--model", model_dir, "--adapter", adapter, "--out", out), 0)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("merged")) == [
        "merged", f"merged.tmp-{os.getpid()}"]


# ---- 3. a huge rank in adapter_config.json: exit 1 naming the file and field, no allocation -------------

@pytest.mark.parametrize("rank", [2147483647, 2**31, 2**63 - 1, 10**12])
def test_huge_adapter_rank_is_a_named_error(tmp_path, model_dir, ids, arc, rank):
    ad = make_adapter(tmp_path / "ad", rank_in_config=rank)
    for argv in (["lora-merge", "--model", model_dir, "--adapter", ad, "--out", tmp_path / "m"],
                 ["score", "--model", model_dir, "--adapter", ad, "--data", ids, "--device", "cpu"],
                 ["generate", "--model", model_dir, "--adapter", ad, "--prompt", "hi", "--device", "cpu",
                  "--max-new-tokens", "1"],
                 ["eval", "--model", model_dir, "--adapter", ad, "--task", "arc_easy", "--data", arc, "--device",
                  "cpu"]):
        expect(run(*argv, timeout=120), 1, "adapter_config.json", f"'r' = {rank}", "lora_A")
    assert not (tmp_path / "m").exists()


# ---- 4. non-finite weights are refused, naming the tensor --------------------------------------------------

def nan_b(t):
    t["base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"][3, 1] = float("nan")


def inf_a(t):
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"][0, 5] = float("inf")


@pytest.mark.parametrize("edit,alpha,needle", [
    (nan_b, 4.0, "layers.1.self_attn.v_proj.lora_B.weight' holds NaN or Inf"),
    (inf_a, 4.0, "layers.0.self_attn.q_proj.lora_A.weight' holds NaN or Inf"),
    (None, 1e308, "'lora_alpha' = 1e+308"),
])
def test_non_finite_adapters_are_refused(tmp_path, model_dir, ids, arc, edit, alpha, needle):
    ad = make_adapter(tmp_path / "ad", alpha=alpha, edit=edit)
    for argv in (["lora-merge", "--model", model_dir, "--adapter", ad, "--out", tmp_path / "m"],
                 ["score", "--model", model_dir, "--adapter", ad, "--data", ids, "--device", "cpu"],
                 ["generate", "--model", model_dir, "--adapter", ad, "--prompt", "hi", "--device", "cpu",
                  "--max-new-tokens", "1"],
                 ["eval", "--model", model_dir, "--adapter", ad, "--task", "arc_easy", "--data", arc, "--device",
                  "cpu"]):
        expect(run(*argv, timeout=120), 1, needle)
    assert not (tmp_path / "m").exists()


def edited_weights(model_dir, dst, name, fn):
    from safetensors.torch import load_file, save_file
    shutil.copytree(model_dir, dst)
    w = load_file(dst / "model.safetensors")
    w[name] = fn(w[name])
    save_file(w, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_a_non_finite_base_model_is_refused(tmp_path, model_dir, ids, arc, adapter):
    def inf_at(x):
        x = x.clone()
        x.view(-1)[7] = float("inf")
        return x
    bad = edited_weights(model_dir, tmp_path / "bad", "model.layers.0.mlp.up_proj.weight", inf_at)
    needle = "tensor 'model.layers.0.mlp.up_proj.weight' holds NaN or Inf"
    expect(run("score", "--model", bad, "--data", ids, "--device", "cpu"), 1, needle)
    expect(run("eval", "--model", bad, "--task", "arc_easy", "--data", arc, "--device", "cpu"), 1, needle)
    expect(run("generate", "--model", bad, "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "1"), 1, needle)
    expect(run("lora-merge", "--model", bad, "--adapter", adapter, "--out", tmp_path / "m"), 1, needle)


# ---- 10. command-line values -------------------------------------------------------------------------------

def test_command_line_values_are_checked(tmp_path, model_dir, ids, arc):
    cfg = data_config(tmp_path)
    expect(run("data", "--config", cfg, "--convert", ""), 2, "--convert")
    for v in ("0", "-5"):
        expect(run("score", "--model", model_dir, "--data", ids, "--max-batch-tokens", v), 2, "--max-batch-tokens")
    for v in ("-1", "0"):
        expect(run("eval", "--model", model_dir, "--task", "arc_easy", "--data", arc, "--limit", v), 2, "--limit")
    for argv in (["--config", cfg, "--set", "optim.lr"], ["data", "--config", cfg, "--set", "=3"],
                 ["config", "--config", cfg, "--set", "nokey"]):
        expect(run(*argv), 2, "--set", "key=value")


def test_eval_with_non_finite_log_likelihoods_fails_naming_the_document(tmp_path, model_dir, arc):
    # Finite weights whose products overflow float32: the final norm's 3e38 makes the hidden state Inf.
    big = edited_weights(model_dir, tmp_path / "big", "model.norm.weight", lambda x: x * 0 + 3e38)
    out = tmp_path / "r.json"
    p = run("eval", "--model", big, "--task", "arc_easy", "--data", arc, "--device", "cpu", "--out", out)
    expect(p, 1, "NaN/Inf", "document 0", str(arc))
    assert json.loads(out.read_text())["non_finite_loglikelihoods"] == 6  # kept for diagnosis
