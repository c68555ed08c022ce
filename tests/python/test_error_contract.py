"""The error contract of `sftgo-train`, run against every bad input of issue 17 that once ended in an
internal error (exit 3), a raw LibTorch backtrace, a hang or silent nonsense:

  exit 0  a complete job;
  exit 1  a reported error that names the file, line, key or tensor and what was expected;
  exit 2  a bad command line;
  exit 3  "internal error": must never be reachable from input (asserted for every case here).

Each case asserts the exit code and that stderr names the place (file:line, key or flag). Tiny
stand-ins: the demo tokenizer (1346 ids) and a random 2-layer Llama whose vocabulary is padded to
1408 rows, as the demo model's is.
"""
import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
PADDED_VOCAB = 1408  # the demo model's rows; the demo tokenizer has 1346 ids
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


def run(*args, input=None, timeout=300):
    return subprocess.run([str(BIN), *map(str, args)], capture_output=True, text=True, cwd=ROOT, input=input,
                          timeout=timeout)


def expect(p, code, *needles):
    """Exit `code`, never 3, and every needle in stderr."""
    assert p.returncode != 3, f"internal error reached from input:\n{p.stderr}"
    assert p.returncode == code, f"exit {p.returncode}, expected {code}\nstderr:\n{p.stderr}"
    for n in needles:
        assert str(n) in p.stderr, f"{n!r} not in stderr:\n{p.stderr}"


def make_tiny_model(out: Path, vocab=PADDED_VOCAB, tokenizer=DEMO_TOK, **overrides):
    """A random Llama saved by transformers (config.json + model.safetensors) plus tokenizer files."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=256, rope_theta=10000.0, tie_word_embeddings=False,
               bos_token_id=None, eos_token_id=None)
    cfg.update(overrides)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg))
    model.save_pretrained(out, safe_serialization=True)
    for f in Path(tokenizer).iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny")


def edited_model(src: Path, dst: Path, **config_changes):
    """A copy of `src` whose config.json has `config_changes` applied (None deletes a key)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in config_changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


# ---- YAML config: file:line for what yaml-cpp once accepted silently ---------------------------------

YAML_CASES = {
    # name: (text, line, what the message names)
    "duplicate_key": ("optim:\n  lr: 3e-3\n  lr: 1.0\n", 3, "'optim.lr' is given twice"),
    "repeated_section": ("optim:\n  lr: 3e-3\ntrain:\n  epochs: 1\noptim:\n  beta1: 0.5\n", 5, "'optim' is given twice"),
    "second_document": ("optim:\n  lr: 3e-3\n---\noptim:\n  lr: 1.0\n", 3, "second YAML document"),
    "stray_comma": (",", 1, "invalid YAML"),  # hung (yaml-cpp LoadAll) until the fuzzer found it
    "global_batch_2_31": ("train:\n  global_batch_size: 2147483648\n", 2, "train.global_batch_size"),
    "epochs_1e300": ("train:\n  epochs: 1e300\n", 2, "train.epochs"),
    "max_steps_0": ("train:\n  max_steps: 0\n", 2, "train.max_steps"),
    "hidden_size_0": ("model:\n  hidden_size: 0\n", 2, "model.hidden_size"),
}


@pytest.mark.parametrize("name", sorted(YAML_CASES))
def test_bad_yaml_names_file_line_and_key(tmp_path, name):
    text, line, what = YAML_CASES[name]
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(text)
    expect(run("config", "--config", cfg), 1, f"{cfg}:{line}", what)
    # Training reads the config the same way (and stops before doing anything).
    expect(run("--config", cfg), 1, f"{cfg}:{line}", what)


def test_bad_set_override_names_the_key():
    expect(run("config", "--set", "train.max_steps=0"), 1, "--set train.max_steps", "expected -1, or in [1,")


# ---- config.json read back from a checkpoint -----------------------------------------------------------

# transformers 5 writes RoPE as "rope_parameters"; 4.x configs (the issue's) have top-level rope_theta
# and rope_scaling, so those cases drop rope_parameters.
CONFIG_JSON_CASES = {
    "rope_theta_0": ({"rope_theta": 0, "rope_parameters": None}, "rope_theta"),
    "rope_parameters_theta_0": ({"rope_parameters": {"rope_type": "default", "rope_theta": 0.0}}, "rope_theta"),
    "max_positions_negative": ({"max_position_embeddings": -1}, "max_position_embeddings"),
    "hidden_not_divisible": ({"hidden_size": 30, "head_dim": None}, "num_attention_heads"),
    "kv_heads_not_dividing": ({"num_key_value_heads": 3}, "num_key_value_heads"),
    "kv_heads_quoted": ({"num_key_value_heads": "2"}, "num_key_value_heads"),
    "vocab_zero": ({"vocab_size": 0}, "vocab_size"),
    "rms_eps_negative": ({"rms_norm_eps": -1e-5}, "rms_norm_eps"),
    "rope_scaling_band": ({"rope_parameters": None, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}},
                          "high_freq_factor"),
}


@pytest.mark.parametrize("name", sorted(CONFIG_JSON_CASES))
def test_bad_config_json_names_file_and_key(tmp_path, model_dir, name):
    changes, key = CONFIG_JSON_CASES[name]
    bad = edited_model(model_dir, tmp_path / "m", **changes)
    data = tmp_path / "ids.jsonl"
    data.write_text('{"ids": [1, 2, 3]}\n')
    expect(run("score", "--model", bad, "--data", data, "--device", "cpu"), 1, bad / "config.json", key)
    expect(run("generate", "--model", bad, "--prompt", "hi", "--device", "cpu"), 1, bad / "config.json", key)


# ---- generate: bad flags are exit 2 with the flag named ------------------------------------------------

@pytest.mark.parametrize("flags, needle", [
    (["--temperature", "nan"], "--temperature"),
    (["--temperature", "-1"], "--temperature"),
    (["--temperature", "inf"], "--temperature"),
    (["--top-p", "nan"], "--top-p"),
    (["--top-p", "0"], "--top-p"),
    (["--max-new-tokens", "1e9"], "--max-new-tokens"),
    (["--max-new-tokens", "-5"], "--max-new-tokens"),
    # Within the flag's own bound but past the model's 256 positions: known once the model is read.
    (["--max-new-tokens", "1000"], "max_position_embeddings"),
])
def test_generate_bad_flags_exit_2(model_dir, flags, needle):
    expect(run("generate", "--model", model_dir, "--prompt", "hi", "--device", "cpu", *flags), 2, needle)


def test_generate_fills_the_context_exactly(model_dir):
    # BOS + "hi" is 2 tokens of the demo tokenizer; 254 new ones fill the 256 positions.
    p = run("generate", "--model", model_dir, "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "254")
    expect(p, 0)


def test_sampling_never_picks_ids_the_tokenizer_lacks(tmp_path, model_dir):
    """The model has 1408 rows for 1346 tokenizer ids. Make the padding rows win every argmax (their
    head rows are large): unmasked, greedy and sampled generation picked them and failed to decode."""
    torch = pytest.importorskip("torch")
    from safetensors.torch import load_file, save_file
    biased = tmp_path / "biased"
    shutil.copytree(model_dir, biased)
    weights = load_file(biased / "model.safetensors")
    head = weights["lm_head.weight"].clone()
    head[1346:] = 50.0 * torch.sign(torch.randn(PADDED_VOCAB - 1346, head.shape[1]))
    weights["lm_head.weight"] = head
    save_file(weights, biased / "model.safetensors", metadata={"format": "pt"})
    for flags in (["--temperature", "0"], ["--temperature", "1.0", "--seed", "1"], ["--temperature", "2", "--seed", "2"],
                  ["--temperature", "1", "--top-p", "0.5", "--seed", "3"]):
        p = run("generate", "--model", biased, "--prompt", "hello", "--device", "cpu", "--max-new-tokens", "24", *flags)
        expect(p, 0)


def test_generation_prompt_ids_equal_training_prompt_ids(tmp_path, model_dir):
    """`generate --chat` renders through the training template: a prompt starting with U+00A0 gives
    the ids of the training rendering up to the assistant's reply (the ASCII-only trim it once did
    kept the U+00A0 and tokenized differently)."""
    tool = BUILD / "bin" / "sftgo_data_template_ids"
    if not tool.exists():
        pytest.skip(f"{tool} not built")
    prompt = "\u00a0Hello there"
    p = run("--log-level", "debug", "generate", "--chat", "--model", model_dir, "--prompt", prompt, "--device", "cpu",
            "--max-new-tokens", "1")
    expect(p, 0)
    line = next(l for l in p.stderr.splitlines() if "generate: prompt ids [" in l)
    gen_ids = json.loads(line[line.index("prompt ids [") + len("prompt ids "):line.rindex("]") + 1])
    conv = tmp_path / "conv.jsonl"
    conv.write_text(json.dumps({"messages": [{"role": "user", "content": prompt},
                                             {"role": "assistant", "content": "Hi."}]}) + "\n")
    out = subprocess.run([str(tool), str(DEMO_TOK), str(conv)], check=True, capture_output=True, text=True).stdout
    train = json.loads(out)
    first_trained = next(i for i, label in enumerate(train["labels"]) if label != -100)
    assert gen_ids == train["ids"][:first_trained]


# ---- a NaN model: refused as loaded, naming the tensor (issue 25 item 4; tests/python/test_outputs.py) ----

@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, model_dir):
    from safetensors.torch import load_file, save_file
    dst = tmp_path_factory.mktemp("nan") / "m"
    shutil.copytree(model_dir, dst)
    weights = load_file(dst / "model.safetensors")
    weights["model.norm.weight"] = weights["model.norm.weight"] * float("nan")
    save_file(weights, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_score_of_a_nan_model_is_a_reported_error(tmp_path, nan_model):
    data = tmp_path / "ids.jsonl"
    data.write_text('{"ids": [1, 2, 3, 4]}\n')
    out = tmp_path / "scores.jsonl"
    p = run("score", "--model", nan_model, "--data", data, "--device", "cpu", "--out", out)
    expect(p, 1, "'model.norm.weight' holds NaN or Inf", str(nan_model))
    assert not out.exists()


def test_eval_of_a_nan_model_is_a_reported_error(tmp_path, nan_model):
    data = tmp_path / "arc.jsonl"
    data.write_text(json.dumps({"question": "Which is a fruit?", "answerKey": "A",
                                "choices": {"text": ["apple", "stone"], "label": ["A", "B"]}}) + "\n")
    out = tmp_path / "result.json"
    p = run("eval", "--model", nan_model, "--task", "arc_easy", "--data", data, "--device", "cpu", "--out", out)
    expect(p, 1, "'model.norm.weight' holds NaN or Inf", str(nan_model))
    assert not out.exists()


def test_generate_with_a_nan_model_is_a_reported_error(nan_model):
    p = run("generate", "--model", nan_model, "--prompt", "hi", "--device", "cpu", "--max-new-tokens", "3")
    expect(p, 1, "'model.norm.weight' holds NaN or Inf")


# ---- JSONL data (the reader fix is src/data/reader.cpp's) ----------------------------------------------

def data_config(tmp_path, data, on_bad="stop"):
    cfg = tmp_path / "data.yaml"
    cfg.write_text(f"tokenizer:\n  path: {DEMO_TOK}\ndata:\n  path: {data}\n  cache_dir: ''\n"
                   f"  on_bad_record: {on_bad}\n  max_seq_len: 64\n")
    return cfg


def test_jsonl_number_overflow_names_file_line_and_skip_skips_it(tmp_path):
    data = tmp_path / "d.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]})
    bad = '{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "n": 1e999999}'
    data.write_text(good + "\n" + bad + "\n" + good + "\n")
    expect(run("data", "--config", data_config(tmp_path, data)), 1, f"{data}:2")
    p = run("data", "--config", data_config(tmp_path, data, "skip"))
    expect(p, 0)


# ---- issue 24: `config` refuses what training would; suggestions; preset vs checkpoint ------------------

def test_config_rejects_an_unknown_grouping_function_as_training_does(tmp_path):
    # `config` said nothing about it (exit 0); only training stopped, after loading the data.
    for cmd in (["config"], ["--set", f"run.output_dir={tmp_path / 'run'}"]):
        p = run(*cmd, "--config", "configs/demo_tiny.yaml", "--set", "grouping.function=tf-idf")
        expect(p, 1, "unknown grouping function 'tf-idf'", "did you mean 'tfidf'?")
    assert not (tmp_path / "run").exists()  # training stopped before creating anything
    for fn in ("tfidf", "rho1", "llmlingua2", "none", "random"):
        expect(run("config", "--set", f"grouping.function={fn}", "--set", "loss.objective=ce"), 0)


@pytest.mark.parametrize("given, expected", [
    ("optim.learning_rate", "optim.lr"),
    ("optim.lr_scheduler_type", "optim.schedule"),
    ("train.per_device_train_batch_size", "train.micro_batch_size"),
    ("train.gradient_accumulation_steps", "train.global_batch_size"),
    ("train.num_train_epochs", "train.epochs"),
    ("data.max_seq_length", "data.max_seq_len"),
    ("optim.warmup_steps_total", "optim.warmup_steps"),
    ("train.weight_decay", "optim.weight_decay"),
])
def test_unknown_key_suggests_the_sftgo_name(given, expected):
    expect(run("config", "--set", f"{given}=1"), 1, f"--set: unknown config key '{given}'",
           f"did you mean '{expected}'?")


def model_config_only(path: Path, **shape):
    """A checkpoint directory with just config.json: enough for the shape check, which runs first."""
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=1408, hidden_size=32,
               intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
               max_position_embeddings=256, rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu",
               tie_word_embeddings=False)
    cfg.update(shape)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_preset_is_checked_against_the_checkpoint(tmp_path):
    ckpt = model_config_only(tmp_path / "two_layers")
    cfg = tmp_path / "lora8b.yaml"
    cfg.write_text(f"model:\n  preset: llama3.1-8b\n  path: {ckpt}\nlora:\n  enabled: true\n"
                   f"tokenizer:\n  path: {DEMO_TOK}\nrun:\n  output_dir: {tmp_path / 'run'}\n")
    needles = [f"model.path {ckpt} is not the model the config describes",
               "num_hidden_layers 32 (model.preset llama3.1-8b) vs 2", "hidden_size 4096 (model.preset llama3.1-8b) vs 32",
               "vocab_size 128256 (model.preset llama3.1-8b) vs 1408", "set model.preset: auto"]
    expect(run("config", "--config", cfg), 1, *needles)
    expect(run("--config", cfg), 1, *needles)  # training: before anything is loaded or written
    assert not (tmp_path / "run").exists()
    # auto: the checkpoint's shape, whatever the config says.
    expect(run("config", "--config", cfg, "--set", "model.preset=auto", "--set", "model.num_layers=4"), 0)
    # No preset in the config: nothing to check, but a shape override is (with model.path it was ignored).
    cfg.write_text(f"model:\n  path: {ckpt}\ntokenizer:\n  path: {DEMO_TOK}\n")
    expect(run("config", "--config", cfg), 0)
    expect(run("config", "--config", cfg, "--set", "model.vocab_size=1408"), 0)
    expect(run("config", "--config", cfg, "--set", "model.num_layers=4"), 1,
           "num_hidden_layers 4 (model.num_layers) vs 2")
    # A published shape names the preset it matches.
    big = model_config_only(tmp_path / "like_1b", vocab_size=128256, hidden_size=2048, intermediate_size=8192,
                            num_hidden_layers=16, num_attention_heads=32, num_key_value_heads=8)
    expect(run("config", "--set", f"model.path={big}", "--set", "model.preset=llama3.2-3b"), 1,
           "or llama3.2-1b, the preset it matches")


def test_lora_on_a_random_base_warns_once():
    p = run("config", "--config", "configs/demo_tiny.yaml", "--set", "lora.enabled=true")
    expect(p, 0)
    warnings = [l for l in p.stderr.splitlines() if "lora.enabled but no model.path" in l]
    assert len(warnings) == 1 and "randomly initialised" in warnings[0], p.stderr
    assert "model.path" not in run("config", "--config", "configs/demo_tiny.yaml").stderr
