"""LoRA parity with PEFT + transformers (CPU, fp32, tiny random Llama).

PEFT builds and saves the adapters (with random non-zero B, so the adapter path really contributes);
our side loads them (model/lora.cpp through tests/model/lora_tool and `sftgo-train`) and must give the
same logits, adapter gradients, scores and merged checkpoint; an adapter saved by us must load in
peft.PeftModel.from_pretrained unchanged and give the same log-probs.
"""
import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")
from safetensors.torch import load_file, save_file  # noqa: E402

BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD / "bin" / "lora_tool"
SFTGO = BUILD / "bin" / "sftgo-train"
pytestmark = pytest.mark.skipif(not TOOL.exists() or not SFTGO.exists(), reason=f"{TOOL} or {SFTGO} not built")

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
TARGET_SETS = {"attn_qv": ["q_proj", "v_proj"], "all_attn": ["q_proj", "k_proj", "v_proj", "o_proj"],
               "mlp": ["gate_proj", "up_proj", "down_proj"], "all_linear": ALL, "all_plus_head": ALL + ["lm_head"]}


def base_model(tmp_path, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
                                   rope_theta=10000.0, max_position_embeddings=128, tie_word_embeddings=False,
                                   attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    src = tmp_path / "base"
    model.save_pretrained(src)
    return src


def peft_adapter(tmp_path, base_dir, targets, r=4, alpha=8.0, rslora=False, seed=1):
    """A PEFT LoRA model on a fresh copy of the base, with random B, saved to tmp_path/adapter."""
    base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets, use_rslora=rslora,
                          task_type="CAUSAL_LM")
    torch.manual_seed(seed)
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0.0, 0.2)
    out = tmp_path / "adapter"
    model.save_pretrained(out)
    return model.eval(), out


def ids_file(tmp_path):
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(7))
    path = tmp_path / "ids.safetensors"
    save_file({"ids": ids}, str(path))
    return ids, path


def test_peft_key_names(tmp_path):
    """The names we write are the names PEFT writes (checked against PEFT's own file)."""
    base = base_model(tmp_path)
    _, adapter = peft_adapter(tmp_path, base, ALL + ["lm_head"])
    theirs = set(load_file(str(adapter / "adapter_model.safetensors")))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in theirs
    assert "base_model.model.lm_head.lora_B.weight" in theirs
    ours_dir = tmp_path / "ours"
    subprocess.run([str(TOOL), "resave", str(base), str(adapter), str(ours_dir)], check=True)
    ours = load_file(str(ours_dir / "adapter_model.safetensors"))
    # PEFT also stores the targeted head's whole base weight (save_embedding_layers="auto"); we read
    # it (test_score_... loads PEFT's file) but never write it: the base model already holds it.
    assert theirs - set(ours) == {"base_model.model.lm_head.base_layer.weight"}
    ref = load_file(str(adapter / "adapter_model.safetensors"))
    for k in ours:
        assert torch.equal(ours[k], ref[k]), k


@pytest.mark.parametrize("name", list(TARGET_SETS))
@pytest.mark.parametrize("rslora", [False, True])
def test_logits_and_gradients_match_peft(tmp_path, name, rslora):
    base = base_model(tmp_path)
    model, adapter = peft_adapter(tmp_path, base, TARGET_SETS[name], r=4, alpha=8.0, rslora=rslora)
    ids, ids_path = ids_file(tmp_path)

    with torch.no_grad():
        want = model(input_ids=ids).logits
        base_logits = model.get_base_model()
    subprocess.run([str(TOOL), "logits", str(base), str(adapter), str(ids_path), str(tmp_path / "l.safetensors")],
                   check=True)
    got = load_file(str(tmp_path / "l.safetensors"))["logits"]
    with torch.no_grad(), model.disable_adapter():
        base_logits = model(input_ids=ids).logits
    assert (want - base_logits).abs().max().item() > 1e-2, "the adapters must change the logits"
    # fp32 both sides, same op order (PEFT: base(x) + B(A(x)) * s); 1e-4 covers matmul blocking
    # differences over 2 layers, as in test_model_hf_interop.
    assert (got - want).abs().max().item() <= 1e-4

    # Adapter gradients of the mean next-token cross-entropy, with and without activation checkpointing.
    model.train()
    model.zero_grad()
    logits = model(input_ids=ids).logits
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), ids[:, 1:].reshape(-1))
    loss.backward()
    ref = {n.replace(".default", ""): p.grad for n, p in model.named_parameters() if p.requires_grad}
    for mode in ([], ["ckpt"]):
        out = tmp_path / f"g{len(mode)}.safetensors"
        subprocess.run([str(TOOL), "grads", str(base), str(adapter), str(ids_path), str(out), *mode], check=True)
        grads = load_file(str(out))
        assert abs(grads.pop("loss").item() - loss.item()) <= 1e-5
        assert set(grads) == set(ref)
        for k, g in grads.items():
            # Gradients are sums over 46 positions of products of fp32 values: allow 1e-4 relative to
            # the tensor's largest entry (plus 1e-6 absolute for tensors near zero).
            tol = 1e-4 * ref[k].abs().max().item() + 1e-6
            assert (g - ref[k]).abs().max().item() <= tol, (k, mode)
            assert ref[k].abs().max().item() > 0, k


def test_score_with_adapter_and_our_adapter_in_peft(tmp_path):
    """`score --adapter` equals PEFT; an adapter saved by us loads in PeftModel.from_pretrained and
    gives the same log-probs."""
    base = base_model(tmp_path, seed=2)
    model, adapter = peft_adapter(tmp_path, base, ["q_proj", "v_proj", "down_proj", "lm_head"], rslora=True)
    ours_dir = tmp_path / "ours"
    subprocess.run([str(TOOL), "resave", str(base), str(adapter), str(ours_dir)], check=True)
    cfg = json.loads((ours_dir / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["use_rslora"] is True and cfg["r"] == 4

    reloaded = peft.PeftModel.from_pretrained(
        transformers.AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), ours_dir).eval()
    seqs = [[1, 5, 17, 99, 3, 150, 42, 7], [1, 8, 9], list(range(2, 40))]
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"ids": s}) + "\n" for s in seqs))
    out = tmp_path / "scores.jsonl"
    subprocess.run([str(SFTGO), "score", "--model", str(base), "--adapter", str(ours_dir), "--data", str(data),
                    "--out", str(out), "--device", "cpu"], check=True)
    ours = [json.loads(l)["logprobs"] for l in out.read_text().splitlines()]
    for seq, lp in zip(seqs, ours):
        for m in (model, reloaded):
            with torch.no_grad():
                logits = m(input_ids=torch.tensor([seq])).logits[0].double()
            ref = torch.log_softmax(logits, -1)[:-1].gather(1, torch.tensor(seq[1:])[:, None])[:, 0]
            # fp32 both sides; 1e-4 as for the logits above.
            assert max(abs(a - b) for a, b in zip(lp, ref.tolist())) < 1e-4


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merge_equals_peft_merge_and_unload(tmp_path, dtype):
    base = base_model(tmp_path, seed=3)
    model, adapter = peft_adapter(tmp_path, base, ALL + ["lm_head"], r=8, alpha=16.0)
    out = tmp_path / "merged"
    p = subprocess.run([str(SFTGO), "lora-merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out),
                        "--dtype", dtype], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    merged = model.merge_and_unload()
    ours = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    theirs = dict(merged.named_parameters())
    for n, q in ours.named_parameters():
        if dtype == "float32":
            # PEFT adds (B @ A) * s to W in fp32, we compute W + (B @ A) * s in fp32: identical up to
            # the matmul's summation order (rank 8): 1e-6 absolute on weights of size ~0.1.
            assert (q - theirs[n]).abs().max().item() <= 1e-6, n
        else:
            # Written in bf16: our weight is PEFT's fp32 merge rounded once to bf16 (ties aside).
            assert (q - theirs[n].to(torch.bfloat16).float()).abs().max().item() <= \
                2 ** -8 * theirs[n].abs().max().item(), n
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        want = merged(input_ids=ids).logits
        got = ours(input_ids=ids).logits
    tol = 1e-4 if dtype == "float32" else 0.1  # bf16 weights: 2^-8 relative per weight
    assert (want - got).abs().max().item() <= tol


def test_bad_adapters_are_clear_errors(tmp_path):
    base = base_model(tmp_path, seed=4)
    _, adapter = peft_adapter(tmp_path, base, ["q_proj"])
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"ids": [1, 2, 3]}) + "\n")

    def score(adapter_dir):
        return subprocess.run([str(SFTGO), "score", "--model", str(base), "--adapter", str(adapter_dir),
                               "--data", str(data), "--device", "cpu"], capture_output=True, text=True)

    p = score(tmp_path / "missing")
    assert p.returncode == 1 and "adapter_config.json: not found" in p.stderr
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["r"] = 8
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    p = score(adapter)
    assert p.returncode == 1
    assert "adapter_config.json: 'r' = 8 does not match" in p.stderr  # checked before allocating (issue 25)
    assert "adapter_model.safetensors: tensor 'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight' " \
           "of shape [4, 64]" in p.stderr
    cfg["r"] = 4
    cfg["use_dora"] = True
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))
    p = score(adapter)
    assert p.returncode == 1 and "'use_dora' = true is not supported" in p.stderr
    p = subprocess.run([str(SFTGO), "lora-merge", "--model", str(base), "--out", str(tmp_path / "m")],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "--adapter" in p.stderr


def test_generate_and_eval_with_adapter_equal_the_merged_model(tmp_path):
    """`generate --adapter` and `eval --adapter` give what the same commands give on the `lora-merge`
    output (itself checked against PEFT's merge_and_unload above)."""
    import shutil
    demo_tok = Path(__file__).resolve().parents[2] / "data" / "demo" / "tokenizer"
    torch.manual_seed(5)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False,
                                   bos_token_id=1335, eos_token_id=1336)
    base = tmp_path / "base"
    transformers.LlamaForCausalLM(cfg).float().eval().save_pretrained(base)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(demo_tok / f, base / f)
    _, adapter = peft_adapter(tmp_path, base, ALL + ["lm_head"], r=8, alpha=16.0)
    merged = tmp_path / "merged"
    subprocess.run([str(SFTGO), "lora-merge", "--model", str(base), "--adapter", str(adapter), "--out", str(merged)],
                   check=True, capture_output=True)  # lora-merge copies the base model's tokenizer files

    def run(*args):
        p = subprocess.run([str(SFTGO), *map(str, args)], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr
        return p.stdout

    gen = ["generate", "--prompt", "Compute 8 * 5.", "--max-new-tokens", "12", "--device", "cpu"]
    with_adapter = run(*gen, "--model", base, "--adapter", adapter)
    assert with_adapter == run(*gen, "--model", merged)
    assert with_adapter != run(*gen, "--model", base), "the adapter must change the continuation"

    rows = [{"question": "Which gas do plants take in?", "answerKey": "B",
             "choices": {"text": ["oxygen", "carbon dioxide", "helium"], "label": ["A", "B", "C"]}},
            {"question": "What melts ice?", "answerKey": "1", "choices": {"text": ["heat", "cold"], "label": ["1", "2"]}}]
    data = tmp_path / "arc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def ev(model, *extra):
        samples = tmp_path / f"s_{len(extra)}_{model.name}.jsonl"
        run("eval", "--model", model, "--task", "arc_easy", "--data", data, "--samples", samples, "--device", "cpu",
            *extra)
        return [json.loads(l) for l in samples.read_text().splitlines()]

    ours, ref = ev(base, "--adapter", adapter), ev(merged)
    assert len(ours) == len(ref) == 2
    for a, b in zip(ours, ref):
        la, lb = a["loglikelihoods"], b["loglikelihoods"]
        assert la and len(la) == len(lb)
        # Unmerged vs merged fp32 weights: the same sums in another order, ~1e-6 per logit.
        assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4


def test_docs_lora_commands_run(tmp_path):
    """Every command of docs/lora.md's sh blocks, run as written on tiny stand-ins laid out at the
    paths the doc uses (models/llama3.1-8b = a tiny random Llama with the demo tokenizer)."""
    import re
    import shlex
    import shutil
    root = Path(__file__).resolve().parents[2]
    cmds, block = [], None
    for line in (root / "docs" / "lora.md").read_text().splitlines():
        if line.startswith("```"):
            block = [] if line.strip() == "```sh" and block is None else None
            continue
        if block is not None and line.strip():
            cmds.append(line.strip())
    assert len(cmds) == 4
    torch.manual_seed(6)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False,
                                   bos_token_id=1335, eos_token_id=1336)
    base = tmp_path / "models" / "llama3.1-8b"
    transformers.LlamaForCausalLM(cfg).float().eval().save_pretrained(base)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(root / "data" / "demo" / "tokenizer" / f, base / f)
    (tmp_path / "runs" / "lora").mkdir(parents=True)
    _, adapter = peft_adapter(tmp_path / "runs" / "lora", base, ALL + ["lm_head"])
    (tmp_path / "score.jsonl").write_text(json.dumps({"text": "Compute 8 * 5."}) + "\n")
    (tmp_path / "arc_easy.jsonl").write_text(json.dumps(
        {"question": "What melts ice?", "answerKey": "1", "choices": {"text": ["heat", "cold"], "label": ["1", "2"]}})
        + "\n")
    for cmd in cmds:
        args = shlex.split(cmd)
        assert args[0] == "sftgo-train"
        p = subprocess.run([str(SFTGO), *args[1:]], cwd=tmp_path, capture_output=True, text=True)
        assert p.returncode == 0, (cmd, p.stderr)
    assert (tmp_path / "scores.jsonl").exists()
    merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "llama3.1-8b-merged")
    assert next(merged.parameters()).dtype == torch.bfloat16
    assert re.search(r"model.safetensors", " ".join(x.name for x in (tmp_path / "models" / "llama3.1-8b-merged").iterdir()))


def tiny_base_with_tokenizer(tmp_path, extra_files=True):
    """A tiny random Llama saved by transformers with the demo tokenizer saved beside it by
    transformers too (tokenizer.json, tokenizer_config.json, special_tokens_map.json, generation_config.json)."""
    demo_tok = Path(__file__).resolve().parents[2] / "data" / "demo" / "tokenizer"
    torch.manual_seed(8)
    cfg = transformers.LlamaConfig(vocab_size=1408, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                   max_position_embeddings=256, initializer_range=0.1, tie_word_embeddings=False,
                                   bos_token_id=1335, eos_token_id=1336)
    base = tmp_path / "base"
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    model.generation_config.eos_token_id = [1336, 1337]
    model.save_pretrained(base)
    transformers.AutoTokenizer.from_pretrained(demo_tok).save_pretrained(base)
    return base


def test_merged_model_has_the_tokenizer(tmp_path):
    """`lora-merge` output is a complete model directory: score/eval/generate --model OUT work with no
    copying by hand, and transformers' AutoTokenizer + AutoModelForCausalLM load it."""
    base = tiny_base_with_tokenizer(tmp_path)
    assert (base / "special_tokens_map.json").exists() or (base / "tokenizer_config.json").exists()
    _, adapter = peft_adapter(tmp_path, base, ALL, r=4, alpha=8.0)
    assert not (adapter / "tokenizer.json").exists()  # PEFT saved no tokenizer: the base model's is taken
    out = tmp_path / "merged"
    p = subprocess.run([str(SFTGO), "lora-merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert f"tokenizer files copied from {base}" in p.stderr, p.stderr
    # Every tokenizer/generation file of the base, byte for byte, beside config.json and the weights.
    want = {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
            "generation_config.json"} & {f.name for f in base.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= want
    have = {f.name for f in out.iterdir()}
    assert want | {"config.json", "model.safetensors"} == have, have
    for name in want:
        assert (out / name).read_bytes() == (base / name).read_bytes(), name
    # What a Hugging Face user does with it.
    tok = transformers.AutoTokenizer.from_pretrained(out)
    ref = transformers.AutoTokenizer.from_pretrained(base)
    assert tok("Compute 8 * 5.")["input_ids"] == ref("Compute 8 * 5.")["input_ids"]
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.generation_config.eos_token_id == [1336, 1337]
    # And with our own commands, no --tokenizer needed.
    (tmp_path / "score.jsonl").write_text(json.dumps({"text": "Compute 8 * 5."}) + "\n")
    p = subprocess.run([str(SFTGO), "score", "--model", str(out), "--data", str(tmp_path / "score.jsonl"), "--out",
                        str(tmp_path / "scores.jsonl")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    row = json.loads((tmp_path / "scores.jsonl").read_text().splitlines()[0])
    text_ids = tok.encode("Compute 8 * 5.", add_special_tokens=False)
    assert row["ids"][-len(text_ids):] == text_ids and len(row["logprobs"]) == len(row["ids"]) - 1
    (tmp_path / "arc.jsonl").write_text(json.dumps(
        {"question": "What melts ice?", "answerKey": "1", "choices": {"text": ["heat", "cold"], "label": ["1", "2"]}})
        + "\n")
    p = subprocess.run([str(SFTGO), "eval", "--model", str(out), "--task", "arc_easy", "--data",
                        str(tmp_path / "arc.jsonl"), "--device", "cpu"], capture_output=True, text=True)
    assert p.returncode == 0 and "| arc_easy |" in p.stdout, p.stderr


def test_merge_prefers_the_adapters_tokenizer_and_warns_when_there_is_none(tmp_path):
    base = tiny_base_with_tokenizer(tmp_path)
    _, adapter = peft_adapter(tmp_path, base, ["q_proj", "v_proj"])
    # An adapter saved with its own tokenizer (PEFT users often save one beside it): that one is taken.
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / f).write_bytes((base / f).read_bytes())
    cfg = json.loads((adapter / "tokenizer_config.json").read_text())
    cfg["model_max_length"] = 77
    (adapter / "tokenizer_config.json").write_text(json.dumps(cfg))
    out = tmp_path / "merged"
    p = subprocess.run([str(SFTGO), "lora-merge", "--model", str(base), "--adapter", str(adapter), "--out", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and f"tokenizer files copied from {adapter}" in p.stderr, p.stderr
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 77
    # A base without any tokenizer: the merge still succeeds, and says what is missing.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in base.iterdir():
        if f.name in ("config.json", "model.safetensors"):
            (bare / f.name).write_bytes(f.read_bytes())
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (adapter / f).unlink()
    out2 = tmp_path / "merged2"
    p = subprocess.run([str(SFTGO), "lora-merge", "--model", str(bare), "--adapter", str(adapter), "--out", str(out2)],
                       capture_output=True, text=True)
    assert p.returncode == 0 and "has no tokenizer" in p.stderr and str(out2) in p.stderr, p.stderr
    assert not (out2 / "tokenizer.json").exists() and (out2 / "config.json").exists()
