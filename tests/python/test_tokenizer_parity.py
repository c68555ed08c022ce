"""Parity of the sftgo tokenizer CLI with Hugging Face `tokenizers` on the Llama-3 tokenizer.

Drives `sftgo-train tokenize` (or, until the app wires it, tests/tokenizer's `tokenize_tool`, which
runs the same run_tokenize_cli) over the >= 20,000-string corpus of scripts/gen_tokenizer_corpus.py.

  * encode:     ours == HF encode(text, add_special_tokens=False)
  * --ordinary: ours == HF with `encode_special_tokens = True`, HF's switch that leaves special-token
                strings as plain text (non-special added tokens would still match; Llama-3 has none)
  * --decode:   ours == HF decode(ids) for HF's ids and for random id sequences (lone bytes -> U+FFFD)
  * round trip: decode(encode(x)) == x
Skips when ../shared's tokenizer or the binary is missing. Build dir: $SFTGO_BUILD_DIR (default
the repository's build/).
"""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOK_DIR = REPO.parent / "shared" / "data" / "llama3"
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))

tokenizers = pytest.importorskip("tokenizers")


def _cli():
    app = BUILD / "bin" / "sftgo-train"
    if app.exists():
        r = subprocess.run([str(app), "tokenize", "--help"], capture_output=True)
        if r.returncode == 0:
            return [str(app), "tokenize"]
    tool = BUILD / "bin" / "tokenize_tool"
    if tool.exists():
        return [str(tool)]
    return None


CLI = _cli()
pytestmark = [
    pytest.mark.skipif(not (TOK_DIR / "tokenizer.json").exists(), reason=f"no {TOK_DIR}/tokenizer.json"),
    pytest.mark.skipif(CLI is None, reason=f"neither sftgo-train tokenize nor tokenize_tool in {BUILD}/bin"),
]


def run_cli(lines, *flags):
    data = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode("utf-8")
    r = subprocess.run(CLI + ["--tokenizer", str(TOK_DIR), *flags], input=data, capture_output=True, timeout=600)
    assert r.returncode == 0, f"{CLI} {flags} failed: {r.stderr.decode(errors='replace')}"
    # Strict UTF-8 decode: the output must be valid. Split on "\n" only: str.splitlines() would also
    # split inside texts holding U+2028, U+0085 or \x1c, which JSON strings may carry unescaped.
    out = [json.loads(line) for line in r.stdout.decode("utf-8").split("\n")[:-1]]
    assert len(out) == len(lines)
    return out


def first_mismatch(texts, ours, theirs):
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            k = next((j for j in range(min(len(a), len(b))) if a[j] != b[j]), min(len(a), len(b)))
            return (f"{sum(x != y for x, y in zip(ours, theirs))} mismatches; first at #{i}: {texts[i]!r:.300}\n"
                    f"  ours {a[max(0, k - 5):k + 15]}\n  hf   {b[max(0, k - 5):k + 15]}  (from index {max(0, k - 5)})")
    return None


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    sys.path.insert(0, str(REPO / "scripts"))
    import gen_tokenizer_corpus

    texts = gen_tokenizer_corpus.generate(20000, 1234)
    assert len(texts) >= 20000
    return texts


@pytest.fixture(scope="module")
def hf():
    return tokenizers.Tokenizer.from_file(str(TOK_DIR / "tokenizer.json"))


@pytest.fixture(scope="module")
def encoded(corpus):
    return [x["ids"] for x in run_cli([{"text": t} for t in corpus])]


def test_encode_matches_hf(corpus, hf, encoded):
    want = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    assert (msg := first_mismatch(corpus, encoded, want)) is None, msg


def test_ordinary_matches_hf_encode_special_tokens(corpus, hf):
    ours = [x["ids"] for x in run_cli([{"text": t} for t in corpus], "--ordinary")]
    hf.encode_special_tokens = True
    try:
        want = [e.ids for e in hf.encode_batch(corpus, add_special_tokens=False)]
    finally:
        hf.encode_special_tokens = False
    assert (msg := first_mismatch(corpus, ours, want)) is None, msg
    assert all(i < 128000 for ids in ours for i in ids), "ordinary mode produced a special token id"


def test_round_trip(corpus, encoded):
    decoded = [x["text"] for x in run_cli([{"ids": ids} for ids in encoded], "--decode")]
    bad = [i for i, (a, b) in enumerate(zip(decoded, corpus)) if a != b]
    assert not bad, f"{len(bad)} texts do not round-trip; first {corpus[bad[0]]!r:.200} -> {decoded[bad[0]]!r:.200}"


def test_decode_matches_hf(hf, encoded):
    rng = random.Random(5)
    seqs = encoded[:3000]
    # Random id sequences: lone bytes, cut multi-byte characters, special tokens.
    seqs += [[rng.randrange(128256) for _ in range(rng.randint(1, 20))] for _ in range(5000)]
    seqs += [[rng.randrange(128, 256) + 0 for _ in range(rng.randint(1, 6))] for _ in range(2000)]
    ours = [x["text"] for x in run_cli([{"ids": s} for s in seqs], "--decode")]
    want = hf.decode_batch(seqs, skip_special_tokens=False)
    bad = [i for i in range(len(seqs)) if ours[i] != want[i]]
    assert not bad, f"{len(bad)} decode mismatches; first ids {seqs[bad[0]]}: ours {ours[bad[0]]!r} hf {want[bad[0]]!r}"


def test_add_bos_and_golden(hf):
    golden = [json.loads(line) for line in (TOK_DIR / "golden_public.jsonl").read_text().splitlines()]
    ours = run_cli([{"text": g["text"]} for g in golden], "--add-bos")
    for g, o in zip(golden, ours):
        assert o["ids"] == [128000] + g["ids"], g["text"][:100]


def test_bad_input_line_is_reported():
    r = subprocess.run(CLI + ["--tokenizer", str(TOK_DIR)], input=b'{"text": "ok"}\n{"txt": 1}\n', capture_output=True)
    assert r.returncode != 0
    assert b"stdin line 2" in r.stderr
