"""TF-IDF grouping parity with scikit-learn's TfidfVectorizer over token-id documents.

Runs the C++ tool (tests/grouping/grouping_tool.cpp) on a random corpus and compares per-document
term weights (<= 1e-6) and the top-k masks (tie rule: higher score, then earlier position).
Binary dir from $SFTGO_BUILD_DIR (default: the repository's build/); skipped when the tool is missing.
"""
import json
import math
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

sklearn_text = pytest.importorskip("sklearn.feature_extraction.text")

BUILD_DIR = Path(os.environ.get("SFTGO_BUILD_DIR", Path(__file__).resolve().parents[2] / "build"))
TOOL = BUILD_DIR / "bin" / "sftgo_grouping_tool"
pytestmark = pytest.mark.skipif(not TOOL.exists(), reason=f"{TOOL} not built")


def make_corpus(seed=0, n_docs=300, vocab=2000):
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n_docs):
        length = int(rng.integers(1, 120))
        # Zipf-like ids so that df and tf vary a lot, plus a few very large ids (Llama-3 range).
        ids = np.minimum(rng.zipf(1.3, size=length) - 1, vocab - 1)
        ids[rng.random(length) < 0.02] = 128000 + int(rng.integers(0, 256))
        docs.append([int(x) for x in ids])
    return docs


def run_tool(path, **opts):
    args = [str(TOOL), str(path)]
    for k, v in opts.items():
        args += [f"--{k}", str(v)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines()]


def expected_mask(scores, k_percent):
    n = len(scores)
    m = math.ceil(k_percent / 100.0 * n - 1e-9) if n else 0
    order = sorted(range(n), key=lambda t: (-scores[t], t))
    mask = [0] * n
    for t in order[:m]:
        mask[t] = 1
    return mask


@pytest.mark.parametrize("smooth", [True, False])
@pytest.mark.parametrize("sublinear", [False, True])
def test_tfidf_matches_sklearn(tmp_path, smooth, sublinear):
    docs = make_corpus(seed=int(smooth) * 2 + int(sublinear))
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    got = run_tool(path, smooth=int(smooth), sublinear=int(sublinear), k=30)
    assert len(got) == len(docs)

    vec = sklearn_text.TfidfVectorizer(analyzer=lambda x: x, lowercase=False, smooth_idf=smooth,
                                       sublinear_tf=sublinear, norm="l2", dtype=np.float64)
    x = vec.fit_transform(docs).tocsr()
    vocab = vec.vocabulary_  # term id -> column
    max_err = 0.0
    for i, (doc, row) in enumerate(zip(docs, got)):
        want = {t: x[i, vocab[t]] for t in set(doc)}
        assert row["terms"] == sorted(want), f"doc {i}: terms differ"
        for t, w in zip(row["terms"], row["weights"]):
            max_err = max(max_err, abs(w - want[t]))
        # Per-token scores are the term weights (stored as float32), masks follow the tie rule on them.
        for t, s in zip(doc, row["scores"]):
            assert abs(s - want[t]) <= 1e-6
        assert row["mask"] == expected_mask(row["scores"], 30), f"doc {i}: mask differs"
    print(f"smooth={smooth} sublinear={sublinear}: max |w - sklearn| = {max_err:.3g}")
    assert max_err <= 1e-6


def test_tfidf_without_norm_matches_sklearn(tmp_path):
    docs = make_corpus(seed=7, n_docs=50)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    got = run_tool(path, norm=0)
    vec = sklearn_text.TfidfVectorizer(analyzer=lambda x: x, lowercase=False, norm=None, dtype=np.float64)
    x = vec.fit_transform(docs).tocsr()
    for i, row in enumerate(got):
        for t, w in zip(row["terms"], row["weights"]):
            assert abs(w - x[i, vec.vocabulary_[t]]) <= 1e-9 * max(1.0, abs(w))


def test_other_functions_run(tmp_path):
    docs = make_corpus(seed=3, n_docs=20)
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps(d) + "\n" for d in docs))
    for fn in ("none", "random", "frequency"):
        rows = run_tool(path, function=fn, k=50)
        for doc, row in zip(docs, rows):
            want = 0 if fn == "none" else math.ceil(0.5 * len(doc) - 1e-9)
            assert sum(row["mask"]) == want
