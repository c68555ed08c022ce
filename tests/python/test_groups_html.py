"""`sftgo-train groups --html`: the page a user opens, read as text (issue 24: the page said
"Grouping function 30, top 356%", put the legend after the examples and ended in a literal "{5}")."""
import os
import re
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILD = Path(os.environ.get("SFTGO_BUILD_DIR", ROOT / "build"))
BIN = BUILD / "bin" / "sftgo-train"
DEMO_TOK = ROOT / "data" / "demo" / "tokenizer"
pytestmark = pytest.mark.skipif(not BIN.exists(), reason=f"{BIN} not built")


class PageText(HTMLParser):
    """Visible text per element: the title, and (tag, text) for every h1/h2/p in document order."""

    def __init__(self):
        super().__init__()
        self.stack, self.title, self.blocks, self.body_text = [], "", [], []

    def handle_starttag(self, tag, attrs):
        self.stack.append(tag)
        if tag in ("h1", "h2", "p", "pre"):
            self.blocks.append([tag, ""])

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        if "title" in self.stack:
            self.title += data
        elif "style" not in self.stack:
            self.body_text.append(data)
            if self.blocks and self.blocks[-1][0] in self.stack:
                self.blocks[-1][1] += data


def test_groups_html_page_reads_right(tmp_path):
    page_path = tmp_path / "groups.html"
    args = [BIN, "groups", "--config", ROOT / "configs/demo_tiny.yaml", "--set", f"tokenizer.path={DEMO_TOK}",
            "--set", "data.cache_dir=", "--show", "2", "--html", page_path]
    p = subprocess.run([str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    # What the terminal said is what the page must say.
    fn, k = re.search(r"grouping function (\S+) \(.*\), top (\S+)% per sequence", p.stdout).groups()
    n = re.search(r"^(\d+) examples, \d+ trained tokens", p.stdout, re.M).group(1)
    overall, mean = re.search(r"important share: (\S+)% overall, (\S+)% mean per sequence", p.stdout).groups()
    titles = re.findall(r"^--- (example .*) ---$", p.stdout, re.M)
    assert (fn, k, n) == ("tfidf", "30", "356") and len(titles) == 2, p.stdout

    doc = PageText()
    doc.feed(page_path.read_text())
    assert doc.title == f"sftgo groups: {fn}"
    tags = [t for t, _ in doc.blocks]
    texts = [" ".join(s.split()) for _, s in doc.blocks]
    # Heading, then the legend paragraph, then each example (h2 + its text): the legend comes first.
    assert tags == ["h1", "p", "h2", "pre", "h2", "pre"], tags
    assert texts[0] == f"Grouping function {fn}, top {k}%"
    assert texts[1] == (f"{n} examples; {overall}% of trained tokens important overall, {mean}% mean per sequence. "
                        "highlighted: important (group 1); grey: prompt (not trained).")
    assert [texts[2], texts[4]] == titles
    assert texts[3] and texts[5]
    # No unfilled placeholder anywhere in what the reader sees.
    visible = "".join(doc.body_text)
    assert not re.search(r"\{\d*(:[^}]*)?\}", visible), re.findall(r"\{[^}]{0,8}\}", visible)
