"""Checkpoints saved by sftgo load in transformers and give the same logits; greedy decoding matches."""
import json
import os
import subprocess
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors.torch import load_file, save_file  # noqa: E402

BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD / "bin" / "model_tool"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")


def hf_model(tmp_path, kv, tied, rope3, seed=0):
    torch.manual_seed(seed)
    rope = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16} if rope3 else None
    cfg = transformers.LlamaConfig(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=kv, head_dim=16, rms_norm_eps=1e-5,
                                   rope_theta=10000.0, rope_scaling=rope, max_position_embeddings=128,
                                   tie_word_embeddings=tied, attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(cfg).float().eval()
    src = tmp_path / "hf"
    model.save_pretrained(src)
    return model, src


@pytest.mark.parametrize("kv,tied,rope3,shard", [(4, False, True, 1 << 30), (2, True, True, 60000),
                                                  (1, False, False, 60000)])
def test_our_save_loads_in_transformers(tmp_path, kv, tied, rope3, shard):
    model, src = hf_model(tmp_path, kv, tied, rope3)
    out = tmp_path / "ours"
    subprocess.run([str(TOOL), "resave", str(src), str(out), str(shard)], check=True)
    if shard < (1 << 30):
        assert (out / "model.safetensors.index.json").exists()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] == tied
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert loaded.config.num_key_value_heads == kv
    ids = torch.randint(0, 200, (2, 40), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        got = loaded(input_ids=ids).logits
    # The weights went through our reader and writer unchanged: bit-identical logits.
    assert torch.equal(want, got)
    # Our own forward on our saved checkpoint, against transformers (fp32 noise only).
    save_file({"ids": ids}, str(tmp_path / "ids.safetensors"))
    subprocess.run([str(TOOL), "logits", str(out), str(tmp_path / "ids.safetensors"),
                    str(tmp_path / "logits.safetensors")], check=True)
    ours = load_file(str(tmp_path / "logits.safetensors"))["logits"]
    assert (ours - want).abs().max().item() <= 1e-4


def test_bf16_save_loads_in_transformers(tmp_path):
    model, src = hf_model(tmp_path, 2, False, True)
    out = tmp_path / "ours_bf16"
    subprocess.run([str(TOOL), "resave", str(src), str(out), str(1 << 30), "bf16"], check=True)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for (n, p), (_, q) in zip(model.named_parameters(), loaded.named_parameters()):
        assert torch.equal(p.detach().to(torch.bfloat16), q.detach()), n


def test_greedy_matches_transformers(tmp_path):
    model, src = hf_model(tmp_path, 2, True, True, seed=3)
    prompt = [5, 17, 99, 3, 150, 42]
    out = subprocess.run([str(TOOL), "generate", str(src), "20", *map(str, prompt)], check=True,
                         capture_output=True, text=True).stdout.split()
    with torch.no_grad():
        ref = model.generate(torch.tensor([prompt]), max_new_tokens=20, do_sample=False, eos_token_id=None,
                             pad_token_id=0, min_new_tokens=20)[0, len(prompt):].tolist()
    assert list(map(int, out)) == ref
