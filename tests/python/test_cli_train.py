"""End to end through the sftgo-train binary: command-line contracts, a short training run whose
checkpoint loads in transformers, and `score` parity with transformers on that checkpoint."""
import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def run(*args, check=True, **kw):
    p = subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}")
    return p


def test_version_names_libtorch_and_cuda():
    out = run("--version").stdout
    assert "LibTorch 2.11.0" in out and "CUDA kernels:" in out


def test_bad_config_is_one_clear_line_and_exit_1(tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("optim:\n  lr: 1e-5\n  lr_rate: 2\n")
    p = run("--config", cfg, check=False)
    assert p.returncode == 1
    assert f"{cfg}:3" in p.stderr and "did you mean 'optim.lr'" in p.stderr, p.stderr
    p = run("config", "--config", cfg, "--set", "train.epochs=three", check=False)
    assert p.returncode == 1


def test_usage_errors_exit_2():
    assert run("--no-such-flag", check=False).returncode == 2
    assert run(check=False).returncode == 2  # nothing to do


def test_missing_tokenizer_is_reported(tmp_path):
    p = run("tokenize", "--tokenizer", tmp_path / "nope", check=False, input='{"text": "a"}\n')
    assert p.returncode == 1 and str(tmp_path / "nope") in p.stderr, p.stderr


def train_args(run_dir, steps=6):
    return ["--config", ROOT / "configs/demo_tiny.yaml",
            "--set", f"tokenizer.path={DEMO_TOK}", "--set", "model.vocab_size=1408",
            "--set", "model.hidden_size=32", "--set", "model.intermediate_size=64", "--set", "model.num_layers=2",
            "--set", f"run.output_dir={run_dir}", "--set", f"train.max_steps={steps}", "--set", "data.cache_dir=",
            "--set", "model.device=cpu", "--set", "train.num_threads=2"]


def test_train_checkpoint_loads_in_transformers_and_scores_match(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    run_dir = tmp_path / "run"
    # What a process killed mid-save leaves behind (its pid is gone): the next save removes it.
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run_dir / "checkpoints" / f"step_00000002.tmp-{dead.pid}"
    stale.mkdir(parents=True)
    (stale / "model.safetensors").write_bytes(b"partial")
    run(*train_args(run_dir))
    assert not stale.exists()
    lines = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(1, 7))
    assert all(m["loss_imp"] is not None and m["count_imp"] > 0 for m in lines)
    ckpt = run_dir / "checkpoints" / "step_00000006"
    assert (ckpt / "trainer_state.json").exists() and (ckpt / "tokenizer.json").exists()
    # checkpoints/latest names the newest checkpoint (the paper configs' Rho-1 reference uses it).
    latest = run_dir / "checkpoints" / "latest"
    assert latest.is_symlink() and latest.resolve() == ckpt.resolve()
    run("plot", run_dir)
    assert (run_dir / "group_losses.svg").read_text().startswith("<svg")

    # transformers loads what we wrote; its log-probs equal `sftgo-train score` on the same ids.
    model = transformers.AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).eval()
    ids = [[1335, 304, 262, 220, 343, 1151, 754, 220, 22, 30], [1335, 5, 17, 99, 200, 3]]
    data = tmp_path / "score.jsonl"
    data.write_text("".join(json.dumps({"ids": s}) + "\n" for s in ids))
    out = tmp_path / "scores.jsonl"
    run("score", "--model", ckpt, "--data", data, "--out", out, "--device", "cpu")
    ours = [json.loads(l)["logprobs"] for l in out.read_text().splitlines()]
    for seq, lp in zip(ids, ours):
        with torch.no_grad():
            logits = model(torch.tensor([seq])).logits[0].double()
        ref = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
        # fp32 on both sides with the same op order; 1e-4 covers the different matmul blocking.
        assert max(abs(a - b) for a, b in zip(lp, ref.tolist())) < 1e-4

    # Greedy generation runs on the trained checkpoint and returns text.
    g = run("generate", "--model", ckpt, "--prompt", "Compute 8 * 5.", "--chat", "--max-new-tokens", "8",
            "--device", "cpu")
    assert g.stdout.strip() != "" or g.returncode == 0


def test_resume_auto_continues_to_the_same_end(tmp_path):
    # A constant learning rate makes a 2-step run identical to the first half of a 4-step run, so
    # b's step-2 checkpoint stands for a run that died after saving it.
    const = ["--set", "optim.schedule=constant", "--set", "optim.warmup_ratio=0"]
    a, b = tmp_path / "a", tmp_path / "b"
    run(*train_args(a, steps=4), *const, "--set", "train.save_every=2")
    run(*train_args(b, steps=2), *const)
    p = run(*train_args(b, steps=4), *const, "--set", "train.save_every=2", "--resume", "auto")
    assert "resumed from" in p.stderr
    la = [json.loads(l) for l in (a / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(l) for l in (b / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lb] == [1, 2, 3, 4]
    # Same process count and threads, same op order: the resumed run is bit-identical.
    assert la[-1]["loss"] == lb[-1]["loss"]


def test_data_and_groups_commands(tmp_path):
    common = ["--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
              "--set", "data.cache_dir="]
    out = run("data", *common, "--dump", "1").stdout
    assert "examples:" in out and "356" in out and "[[" in out, out
    html = tmp_path / "groups.html"
    out = run("groups", *common, "--show", "1", "--html", html).stdout
    assert "important" in out and "[[" in out, out
    assert "<html" in html.read_text().lower()
