#!/usr/bin/env python3
"""Code-shape audit: source files over MAX_FILE_LINES lines and functions over MAX_FUNCTION_LINES
lines in src/ and apps/ (the project standard, docs/architecture.md). A function's length runs from
the first line of its signature to its closing brace. The scan strips comments and string/char
literals and matches braces; a `{` at namespace or class scope opens a function body when the text
before it (since the previous `;`, `{` or `}`) holds a `(` and is not an initializer (`=` not
followed by a lambda), so data tables (`kTable[] = {...}`) are never counted as functions.

Usage: scripts/check_sizes.py [ROOT]   (prints every violation; exit 1 when any is not allowed)
"""
import re
import sys
from pathlib import Path

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
SCANNED = ("src", "apps")
SUFFIXES = {".cpp", ".cu", ".h", ".cuh"}

# Violations that stay, each with its reason: (path, function name or "<file>").
# Data tables only; anything else is fixed, not listed.
ALLOWED_DATA_TABLES = {
}

# Files another change is rewriting right now; the lead removes these entries when it lands.
ALLOWED_IN_FLIGHT = {
}


def strip_code(text: str) -> str:
    """Comments and string/char literals replaced by spaces (newlines kept, so line numbers hold)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "R" and text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = text.find(")" + m.group(1) + '"', i)
            j = n if end < 0 else end + len(m.group(1)) + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            # A digit separator (1'000) is not a literal.
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                out.append(" ")
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "#" and (i == 0 or text[i - 1] == "\n"):
            # Preprocessor lines (with continuations) hold no braces that count.
            j = i
            while True:
                k = text.find("\n", j)
                if k < 0:
                    k = n
                    break
                if text[k - 1] != "\\":
                    break
                j = k + 1
            out.append(re.sub(r"[^\n]", " ", text[i:k]))
            i = k
        else:
            out.append(c)
            i += 1
    return "".join(out)


_SCOPE = re.compile(r"^(template\s*<.*>\s*)?(inline\s+)?(namespace|struct|class|union|extern)\b", re.S)
_ACCESS = re.compile(r"^\s*((public|private|protected)\s*:\s*)+")


def _top_level(header: str) -> str:
    """header without the text inside (), [] and <> (default arguments, captures, template args)."""
    out, depth = [], 0
    for c in header:
        if c in "([<":
            depth += 1
        elif c in ")]>" and depth:
            depth -= 1
            continue
        if depth == 0:
            out.append(c)
    return "".join(out)


def _function_name(header: str) -> str:
    # A lambda's variable, else the identifier before the first `(` outside template arguments.
    lam = re.search(r"([\w:]+)\s*=\s*\[", header)
    if lam:
        return lam.group(1)
    depth = 0
    for i, c in enumerate(header):
        if c == "<":
            depth += 1
        elif c == ">":
            depth = max(0, depth - 1)
        elif c == "(" and depth == 0:
            m = re.search(r"((?:[\w:~]+::)?operator\s*\S+?|[~\w:]+)\s*$", header[:i])
            return m.group(1) if m else "<anonymous>"
    return "<anonymous>"


def _match(code: str, i: int) -> int:
    """Index just past the brace that closes the one at i."""
    depth, j, n = 1, i + 1, len(code)
    while j < n and depth:
        depth += {"{": 1, "}": -1}.get(code[j], 0)
        j += 1
    return j


def _classify(header: str) -> str:
    """What a `{` after `header` opens: "scope" (namespace, class, extern block), "function", or
    "data" (an initializer, an enum, a table)."""
    h = header.strip()
    if _SCOPE.match(h) and "(" not in h and "=" not in h:
        return "scope"
    if re.match(r"^(template\s*<.*>\s*)?enum\b", h, re.S) or "(" not in h:
        return "data"
    # `=` outside parentheses/brackets (not a comparison or operator=) makes it an initializer,
    # unless what it initializes with is a lambda.
    top = _top_level(re.sub(r"operator\s*(==|!=|<=|>=|=)", "operator", h))
    if "=" in re.sub(r"(==|!=|<=|>=)", "", top):
        return "function" if re.search(r"=\s*\[", h) else "data"
    return "function"


def functions(text: str):
    """(name, first line, last line) of every function defined at namespace or class scope."""
    code = strip_code(text)
    line_of, line = [], 1
    for c in code:
        line_of.append(line)
        line += c == "\n"
    line_of.append(line)
    found = []
    start, i, n = 0, 0, len(code)
    while i < n:
        c = code[i]
        if c in ";}":
            start = i + 1
        elif c == "{":
            header = _ACCESS.sub("", code[start:i])
            kind = _classify(header)
            if kind == "scope":
                start = i + 1
            elif kind == "data":
                i = start = _match(code, i)
                continue
            else:
                j = _match(code, i)
                # Constructor initializers written with braces (a_{1}, b_{2} {...}): the body is the
                # last brace group of the run.
                while True:
                    k = j
                    while k < n and code[k].isspace():
                        k += 1
                    if k < n and code[k] == ",":
                        nxt = code.find("{", k)
                        if nxt < 0:
                            break
                        j = _match(code, nxt)
                    elif k < n and code[k] == "{":
                        j = _match(code, k)
                    else:
                        break
                first = start + (len(code[start:i]) - len(code[start:i].lstrip()))
                found.append((_function_name(header), line_of[first], line_of[j - 1]))
                i = start = j
                continue
        i += 1
    return found


def scan(root: Path):
    """[(path relative to root, what, lines)] for every file over the file limit ("<file>") and every
    function over the function limit (its name), sorted."""
    out = []
    for top in SCANNED:
        for path in sorted((root / top).rglob("*")):
            if path.suffix not in SUFFIXES or not path.is_file():
                continue
            rel = path.relative_to(root).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            n_lines = text.count("\n") + (0 if text.endswith("\n") or not text else 1)
            if n_lines > MAX_FILE_LINES:
                out.append((rel, "<file>", n_lines))
            for name, first, last in functions(text):
                if last - first + 1 > MAX_FUNCTION_LINES:
                    out.append((rel, name, last - first + 1))
    return sorted(out)


def allowed():
    return {**ALLOWED_DATA_TABLES, **ALLOWED_IN_FLIGHT}


def main(argv):
    root = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1]
    ok = allowed()
    bad = 0
    for rel, what, n in scan(root):
        tag = "allowed: " + ok[(rel, what)] if (rel, what) in ok else "VIOLATION"
        limit = MAX_FILE_LINES if what == "<file>" else MAX_FUNCTION_LINES
        print(f"{rel}: {what}: {n} lines (limit {limit}) [{tag}]")
        bad += (rel, what) not in ok
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
