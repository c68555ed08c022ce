"""Our llama3 template gives the same ids as transformers' apply_chat_template, and trains exactly
the assistant content + <|eot_id|> of every assistant turn.

Runs tests/data's sftgo_data_template_ids tool (from SFTGO_BUILD_DIR, default: the repository's build/) on a
few hundred generated conversations: multi-turn, system prompts, surrounding whitespace (the template
trims it), newlines, Unicode, code, digits. Content never contains special-token strings (transformers
would turn those into control tokens; we deliberately do not, see test_data tests).
"""
import json
import os
import random
import subprocess
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD / "bin" / "sftgo_data_template_ids"
SHARED = Path(__file__).resolve().parents[2].parent / "shared"
TOKENIZER_DIR = SHARED / "data" / "llama3"
pytestmark = [
    pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built"),
    pytest.mark.skipif(not (TOKENIZER_DIR / "tokenizer.json").exists(), reason=f"no tokenizer in {TOKENIZER_DIR}"),
]

N_CONVERSATIONS = 400
IGNORE = -100

PIECES = [
    "hello", "world", "The", "quick brown fox", "jumps", "over", "42", "3.14159", "1,000,000", "x = y + 1",
    "don't", "it's", "we'll", "I'M", "naïve", "café", "Straße", "日本語", "中文字符", "Привет", "مرحبا",
    "🙂", "👍🏽", "e\u0301", "—", "“quoted”", "(parens)", "[brackets]", "{braces}", "a/b", "path\\to",
    "def f(x):\n    return x", "#include <vector>", "SELECT * FROM t;", "<div>html</div>", "<|notspecial|>",
    "   spaced   out   ", "tab\there", "line\nbreak", "two\n\nbreaks", "\r\nwindows", "!!!", "???", "...",
    "ALLCAPS", "camelCase", "snake_case", "12345678901", "0x1F", "a" * 40, "\u00a0nbsp", "\u3000ideo",
]
SYSTEMS = ["You are a helpful assistant.", "Answer in one word.", "  Be concise.  \n", "Tu es un assistant."]


def text(rng):
    n = rng.randint(1, 12)
    parts = [rng.choice(PIECES) for _ in range(n)]
    s = rng.choice([" ", "", "\n", ", "]).join(parts)
    # Whitespace around the content checks that we trim exactly like Jinja's `trim` (str.strip()).
    if rng.random() < 0.3:
        s = rng.choice([" ", "\n", "\t", "  \n ", "\u00a0", "\u2003"]) + s
    if rng.random() < 0.3:
        s = s + rng.choice([" ", "\n", "\n\n", "\t ", "\u3000"])
    return s


def conversation(rng):
    msgs = []
    if rng.random() < 0.35:
        msgs.append({"role": "system", "content": rng.choice(SYSTEMS) if rng.random() < 0.5 else text(rng)})
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3, 4])):
        msgs.append({"role": "user", "content": text(rng)})
        msgs.append({"role": "assistant", "content": text(rng)})
    return msgs


def hf_ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 may return a BatchEncoding
        out = out["input_ids"]
    return list(out)


@pytest.fixture(scope="module")
def hf_tokenizer():
    return transformers.AutoTokenizer.from_pretrained(str(TOKENIZER_DIR))


def run_tool(tmp_path, convs):
    src = tmp_path / "convs.jsonl"
    src.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    out = subprocess.run([str(TOOL), str(TOKENIZER_DIR), str(src)], check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def test_ids_match_transformers(tmp_path, hf_tokenizer):
    rng = random.Random(1234)
    convs = [conversation(rng) for _ in range(N_CONVERSATIONS)]
    ours = run_tool(tmp_path, convs)
    assert len(ours) == len(convs)
    mismatches = []
    for i, (conv, got) in enumerate(zip(convs, ours)):
        want = hf_ids(hf_tokenizer, conv)
        if got["ids"] != want:
            mismatches.append((i, conv, got["ids"], want))
    assert not mismatches, f"{len(mismatches)}/{len(convs)} differ; first: {mismatches[0]}"


def test_labels_cover_assistant_content_and_eot(tmp_path, hf_tokenizer):
    rng = random.Random(99)
    convs = [conversation(rng) for _ in range(100)]
    ours = run_tool(tmp_path, convs)
    for conv, got in zip(convs, ours):
        ids, labels = got["ids"], got["labels"]
        expected = [IGNORE] * len(ids)
        # The template is prefix-stable: the ids of messages[:k] are a prefix of the full ids, so
        # message k spans [len(prefix k), len(prefix k+1)); its first 4 tokens are the header
        # (<|start_header_id|> role <|end_header_id|> "\n\n").
        start = 0
        for k, m in enumerate(conv):
            end = len(hf_ids(hf_tokenizer, conv[: k + 1]))
            assert ids[:end] == hf_ids(hf_tokenizer, conv[: k + 1])
            if m["role"] == "assistant":
                first = start + 4 + (1 if k == 0 else 0)
                expected[first:end] = ids[first:end]
            start = end
        assert labels == expected


def hf_generation_ids(tok, messages):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    if hasattr(out, "keys"):
        out = out["input_ids"]
    return list(out)


def test_generation_prompt_matches_transformers(tmp_path, hf_tokenizer):
    """apply_template(add_generation_prompt=true), what `generate --chat` feeds the model, equals
    transformers' apply_chat_template(add_generation_prompt=True) on conversations that end with a
    user turn, including prompts that start with U+00A0 (Jinja's trim strips it)."""
    rng = random.Random(7)
    convs = []
    for _ in range(150):
        conv = conversation(rng)[:-1]  # drop the last assistant reply: the model is to write it
        convs.append(conv)
    convs.append([{"role": "user", "content": "\u00a0Hello there"}])
    convs.append([{"role": "system", "content": "Be brief."}, {"role": "user", "content": " \u00a0\u3000x = 1\n"}])
    src = tmp_path / "convs.jsonl"
    src.write_text("".join(json.dumps({"messages": c}, ensure_ascii=False) + "\n" for c in convs), encoding="utf-8")
    out = subprocess.run([str(TOOL), str(TOKENIZER_DIR), str(src), "llama3", "--generation-prompt"], check=True,
                         capture_output=True, text=True).stdout
    ours = [json.loads(line)["ids"] for line in out.splitlines()]
    assert len(ours) == len(convs)
    mismatches = [(i, c, got, hf_generation_ids(hf_tokenizer, c))
                  for i, (c, got) in enumerate(zip(convs, ours)) if got != hf_generation_ids(hf_tokenizer, c)]
    assert not mismatches, f"{len(mismatches)}/{len(convs)} differ; first: {mismatches[0]}"
