"""LLMLingua-2 grouping against the `llmlingua` package (0.2.2): word probabilities of our C++ scorer
(TorchScript export + sentencepiece C++) equal PromptCompressor's own (HF model + HF tokenizer) on a
tiny random XLM-R token classifier built here; plus `sftgo-train groups` with grouping.function
llmlingua2 end to end.

Tolerance 1e-5 on word probabilities: both sides run the same fp32 weights with the same kernels,
but llmlingua pads every window to 512 positions while we pad to the longest window of a batch, so
matrix products are blocked differently; that reassociation moves probabilities by ~1e-7, and 1e-5
leaves a wide margin while still catching any wrong piece, window or averaging (those move
probabilities by >1e-3 with the widened random classifier head).
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
TOOL = BUILD / "bin" / "sftgo_llmlingua2_tool"
BIN = BUILD / "bin" / "sftgo-train"
DEMO = ROOT / "data" / "demo" / "demo_sft.jsonl"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
PY = sys.executable
TOL = 1e-5

pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")
llmlingua = pytest.importorskip("llmlingua")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """(HF checkpoint dir, export dir). llmlingua only splits XLM-R words when the model name contains
    "xlm-roberta-large", hence the directory name."""
    base = tmp_path_factory.mktemp("llm2")
    hf = base / "tiny-xlm-roberta-large"
    exp = base / "export"
    subprocess.run([PY, ROOT / "scripts/make_tiny_llmlingua2.py", hf], check=True, capture_output=True)
    subprocess.run([PY, ROOT / "scripts/export_llmlingua2.py", hf, exp], check=True, capture_output=True)
    return hf, exp


@pytest.fixture(scope="module")
def compressor(model, monkeypatch_module):
    import tiktoken
    from llmlingua import PromptCompressor

    # PromptCompressor downloads a GPT tokenizer that the word probabilities never use; no network here.
    monkeypatch_module.setattr(tiktoken, "encoding_for_model", lambda name: None)
    return PromptCompressor(model_name=str(model[0]), device_map="cpu", use_llmlingua2=True)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


class _CountingTokenizer:
    """Stands in for PromptCompressor's tiktoken GPT tokenizer, which only weights the keep threshold."""

    def encode(self, word):
        return [0] * max(1, len(word))


def llmlingua_words(pc, text, window=512):
    """Word list and word probabilities exactly as PromptCompressor's token-level compression
    (__compress, token_to_word="mean", no force tokens) computes them, captured from its private
    per-chunk token -> word conversion. (__get_context_prob, the context-level filter, is not the
    reference: its "no force" word probability repeats the first piece's probability for every
    continuation piece, so it is the first piece's, not the mean.)"""
    pc.max_seq_len = window
    pc.oai_tokenizer = _CountingTokenizer()
    captured = []
    orig = pc._PromptCompressor__token_prob_to_word_prob

    def spy(token_probs, convert_mode="mean"):
        out = orig(token_probs, convert_mode=convert_mode)
        captured.extend(float(p) for p in out)
        return out

    pc._PromptCompressor__token_prob_to_word_prob = spy
    try:
        chunks = pc._PromptCompressor__chunk_context(text, chunk_end_tokens={".", "\n"})
        _, words, _ = pc._PromptCompressor__compress([chunks], reduce_rate=0.5, token_to_word="mean", force_tokens=[],
                                                     token_map={}, force_reserve_digit=False, drop_consecutive=False)
    finally:
        del pc._PromptCompressor__token_prob_to_word_prob
        pc.max_seq_len = 512
    return words[0], captured


def ours(exp, texts, tmp_path, *extra):
    inp = tmp_path / "texts.jsonl"
    inp.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    p = subprocess.run([str(TOOL), str(exp), str(inp), *map(str, extra)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return [json.loads(line) for line in p.stdout.splitlines()]


def demo_responses(n):
    out = []
    for line in DEMO.read_text().splitlines():
        for m in json.loads(line)["messages"]:
            if m["role"] == "assistant":
                out.append(m["content"])
    return out[:n]


TRICKY = [
    "Hello, world! This is a test.",
    "Numbers: 3.14, 42 and 1e-5; (parentheses) [brackets] {braces}?!",
    "Accents é and ñ and emoji 🙂 are unknown to the tiny model.",
    "  Leading spaces,   runs   of spaces,\nnew lines\n\nand tabs\tbetween words.  ",
    "x",
    "...",
]


def assert_same(mine, words, probs, text):
    assert mine["words"] == words, text
    assert len(mine["probs"]) == len(probs)
    worst = max((abs(a - b) for a, b in zip(mine["probs"], probs)), default=0.0)
    assert worst <= TOL, f"{text!r}: max |diff| {worst:.3g}"
    # Every span is the word's text (▁ stripped) or covers it after sentencepiece normalisation.
    for (b, e), w in zip(mine["spans"], mine["words"]):
        assert 0 <= b <= e <= len(text.encode())


def test_pieces_match_hf_tokenizer(model, tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model[0]))
    texts = demo_responses(40) + TRICKY
    for t, mine in zip(texts, ours(model[1], texts, tmp_path)):
        assert mine["ids"] == tok(t, add_special_tokens=False)["input_ids"], t


def test_word_probabilities_match_llmlingua(model, compressor, tmp_path):
    texts = demo_responses(60) + TRICKY
    for text, mine in zip(texts, ours(model[1], texts, tmp_path, "--batch", 7)):
        words, probs = llmlingua_words(compressor, text)
        assert len(words) > 0 or text.strip(". ") == "" or not mine["words"]
        assert_same(mine, words, probs, text)


def test_multi_window_texts_match_llmlingua(model, compressor, tmp_path):
    # Short windows (32 ids) so that each text is cut into several, at "." pieces.
    long_texts = [" ".join(demo_responses(200)[i:i + 25]) for i in (0, 50, 100)]
    for window in (32, 64):
        for text, mine in zip(long_texts, ours(model[1], long_texts, tmp_path, "--window", window, "--batch", 3)):
            words, probs = llmlingua_words(compressor, text, window=window)
            assert_same(mine, words, probs, text)


def test_groups_command_end_to_end(model, tmp_path):
    if not BIN.exists():
        pytest.skip(f"{BIN} not built")
    cache = tmp_path / "cache"
    args = [str(BIN), "groups", "--config", str(ROOT / "configs/demo_tiny.yaml"), "--set", f"tokenizer.path={DEMO_TOK}",
            "--set", f"data.cache_dir={cache}", "--set", "grouping.function=llmlingua2",
            "--set", f"grouping.llmlingua2_model={model[1]}", "--set", "grouping.llmlingua2_device=cpu",
            "--show", "2"]
    p = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "grouping function llmlingua2 (computed" in p.stdout and "[[" in p.stdout, p.stdout
    # A miss loads the classifier on the device asked for, and frees it once the groups are computed.
    assert "llmlingua2 classifier loaded on cpu" in p.stdout + p.stderr, p.stderr
    assert "llmlingua2 classifier released from cpu" in p.stdout + p.stderr, p.stderr
    # Second run: the static groups come from the on-disk cache, and the classifier (XLM-R large in a
    # real run: 2.2 GB, per rank) is never loaded (issue 15, item 2).
    p2 = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
    assert p2.returncode == 0 and "loaded from" in p2.stdout, p2.stdout + p2.stderr
    assert "classifier loaded" not in p2.stdout + p2.stderr, p2.stderr
    share = [l for l in p.stdout.splitlines() if l.startswith("important share")]
    assert share and share == [l for l in p2.stdout.splitlines() if l.startswith("important share")]
    # Another aggregation is another cache entry and other groups.
    p3 = subprocess.run(args + ["--set", "grouping.llmlingua2_aggregation=mean"], capture_output=True, text=True,
                        cwd=ROOT)
    assert p3.returncode == 0 and "(computed" in p3.stdout, p3.stdout + p3.stderr


def test_groups_command_bad_export_is_a_clear_error(model, tmp_path):
    if not BIN.exists():
        pytest.skip(f"{BIN} not built")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in model[1].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "sentencepiece.bpe.model").write_bytes((model[0] / "sentencepiece.bpe.model").read_bytes() + b"x")
    p = subprocess.run([str(BIN), "groups", "--config", str(ROOT / "configs/demo_tiny.yaml"), "--set",
                        f"tokenizer.path={DEMO_TOK}", "--set", "data.cache_dir=", "--set",
                        "grouping.function=llmlingua2", "--set", f"grouping.llmlingua2_model={bad}"],
                       capture_output=True, text=True, cwd=ROOT)
    assert p.returncode == 1 and "sha256" in p.stderr, p.stderr


# ---- device neutrality of the export (issue 15, item 1) --------------------------------------------------------
# A trace records the tracing device as prim::Constant Device values (aten::to(mask, cpu), arange/zeros
# on cpu in transformers' mask code); torch.jit.load(map_location=cuda) moves only parameters, so such
# a module fails on a GPU. These tests need no GPU: the meta device stands in for "another device".

def _device_constants(graph):
    return [str(n).strip() for n in graph.findAllNodes("prim::Constant")
            if n.output().type().kind() == "DeviceObjType"]


def test_export_has_no_device_constants(model):
    import torch

    module = torch.jit.load(str(model[1] / "model.pt"))
    assert _device_constants(module.inlined_graph) == []


def test_export_runs_on_the_device_of_its_inputs(model):
    import torch

    module = torch.jit.load(str(model[1] / "model.pt"))
    for name, t in list(module.named_parameters()) + list(module.named_buffers()):
        *path, leaf = name.split(".")
        sub = module
        for p in path:
            sub = getattr(sub, p)
        sub._c.setattr(leaf, t.detach().to("meta"))
    ids = torch.zeros(3, 9, dtype=torch.long, device="meta")
    out = module(ids, torch.ones_like(ids))
    assert out.device.type == "meta" and tuple(out.shape) == (3, 9, 2)


def test_export_logits_equal_transformers(model):
    # Same fp32 weights and kernels as the eager model; TOL (1e-5) as for the word probabilities above.
    import torch
    from transformers import AutoModelForTokenClassification

    hf = AutoModelForTokenClassification.from_pretrained(str(model[0]), attn_implementation="eager",
                                                         dtype=torch.float32).eval()
    module = torch.jit.load(str(model[1] / "model.pt"))
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 290, (4, 23), generator=gen)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    for row, length in ((1, 17), (3, 4)):
        ids[row, length - 1] = 2
        ids[row, length:] = 1
        mask[row, length:] = 0
    with torch.no_grad():
        want = hf(input_ids=ids, attention_mask=mask).logits.float()
        got = module(ids, mask)
    assert got.shape == want.shape
    assert (got - want)[mask.bool()].abs().max().item() <= TOL


def test_export_accepts_model_and_out_options(model, tmp_path):
    # docs/reproduce.md writes `--model SRC --out OUT`; the positional form is the script's own.
    out = tmp_path / "exp"
    p = subprocess.run([PY, ROOT / "scripts/export_llmlingua2.py", "--model", model[0], "--out", out],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert (out / "model.pt").read_bytes() == (model[1] / "model.pt").read_bytes()
    assert json.loads((out / "llmlingua2.json").read_text())["sentencepiece_sha256"] == \
        json.loads((model[1] / "llmlingua2.json").read_text())["sentencepiece_sha256"]
    p = subprocess.run([PY, ROOT / "scripts/export_llmlingua2.py", "--model", model[0]], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "missing OUT" in p.stderr, p.stderr
