"""`sftgo-train groups --jsonl`: the machine-readable mask export (ids, tokens, trained flags, group,
score per token), checked against an independent TF-IDF (scikit-learn's TfidfVectorizer formula,
written out here) over the trained tokens of the same examples, and the top-k rule of src/grouping."""
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")
SETS = ["tokenizer.path=data/demo/tokenizer", "data.cache_dir=", "data.max_seq_len=128"]


def groups(tmp_path, *extra, name="g.jsonl"):
    out = tmp_path / name
    args = [str(BIN), "groups", "--config", "configs/demo_tiny.yaml", "--show", "0", "--jsonl", str(out)]
    for s in SETS + list(extra):
        args += ["--set", s]
    p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return [json.loads(l) for l in out.read_text().splitlines()], p.stdout


def test_jsonl_export_matches_an_independent_tfidf(tmp_path):
    rows, stdout = groups(tmp_path, "grouping.function=tfidf", "grouping.eta_percentile=70")
    assert f"({len(rows)} examples)" in stdout
    assert len(rows) == sum(1 for l in (ROOT / "data/demo/demo_sft.jsonl").read_text().splitlines() if l.strip())
    docs = [[i for i, t in zip(r["ids"], r["trained"]) if t] for r in rows]
    n = len(docs)
    df = {}
    for d in docs:
        for t in set(d):
            df[t] = df.get(t, 0) + 1
    for k, r in enumerate(rows):
        L = r["num_tokens"]
        assert [len(r[f]) for f in ("ids", "tokens", "trained", "group", "score")] == [L] * 5
        assert r["index"] == k and r["function"] == "tfidf" and r["top_k_percent"] == pytest.approx(30)
        assert r["source"] == f"data/demo/demo_sft.jsonl:{k + 1}" or r["source"].endswith(f"demo_sft.jsonl:{k + 1}")
        assert r["num_trained"] == sum(r["trained"]) and r["num_important"] == sum(r["group"])
        assert all(g == 0 for g, t in zip(r["group"], r["trained"]) if not t)  # only targets are important
        assert all((s is None) == (not t) for s, t in zip(r["score"], r["trained"]))
        # TF-IDF: tf * (ln((1 + n) / (1 + df)) + 1), l2-normalised per document (float32 in C++: 1e-6).
        tf = {}
        for t in docs[k]:
            tf[t] = tf.get(t, 0) + 1
        w = {t: c * (math.log((1 + n) / (1 + df[t])) + 1) for t, c in tf.items()}
        norm = math.sqrt(sum(v * v for v in w.values()))
        for i, t, s in zip(r["ids"], r["trained"], r["score"]):
            if t:
                assert s == pytest.approx(w[i] / norm, abs=1e-6)
        # Top-k: ceil(30% of the trained tokens), higher score first, ties to the earlier position.
        idx = [t for t in range(L) if r["trained"][t]]
        m = math.ceil(0.3 * len(idx) - 1e-9)
        chosen = sorted(idx, key=lambda t: (-r["score"][t], t))[:m]
        assert [t for t in range(L) if r["group"][t]] == sorted(chosen)
    # The tokens are the tokenizer's pieces: their text concatenates to the decoded sequence.
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(ROOT / "data/demo/tokenizer/tokenizer.json"))
    assert "".join(rows[0]["tokens"]) == tok.decode(rows[0]["ids"], skip_special_tokens=False)


def test_jsonl_export_random_and_errors(tmp_path):
    rows, _ = groups(tmp_path, "grouping.function=random", "grouping.top_k_percent=50")
    for r in rows:
        assert r["num_important"] == math.ceil(0.5 * r["num_trained"] - 1e-9)
    # An unwritable path: one clear error naming it, exit 1, nothing half-written.
    blocker = tmp_path / "file"
    blocker.write_text("x")
    p = subprocess.run([str(BIN), "groups", "--config", "configs/demo_tiny.yaml", "--show", "0", "--jsonl",
                        str(blocker / "g.jsonl")] + sum((["--set", s] for s in SETS), []),
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1 and str(blocker / "g.jsonl") in p.stderr, p.stderr
    # Rho-1's groups depend on the model being trained: refused with a reason.
    p = subprocess.run([str(BIN), "groups", "--config", "configs/demo_tiny.yaml", "--show", "0", "--jsonl",
                        str(tmp_path / "r.jsonl"), "--set", "grouping.function=rho1"] + sum((["--set", s] for s in SETS), []),
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 1 and "rho1" in p.stderr and not (tmp_path / "r.jsonl").exists(), p.stderr
