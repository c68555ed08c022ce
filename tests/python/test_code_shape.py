"""The code-shape standard (docs/architecture.md): no file in src/ or apps/ over 500 lines, no
function over 80 lines, except the data tables scripts/check_sizes.py allows by name. The scanner
itself is checked on small sources whose function lengths are known, so a scanner that finds
nothing cannot pass."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import check_sizes  # noqa: E402


def body(n):
    return "".join(f"  x += {i};\n" for i in range(n))


def test_scanner_measures_functions_from_signature_to_closing_brace():
    src = (
        "// a { brace in a comment\n"
        "namespace a {\n"
        "int f(int x) {\n" + body(3) + "  return x;\n}\n"          # lines 3..8: 6 lines
        "const char* kText = \"}{\";\n"
        "constexpr int kTable[] = {\n" + "  1,\n" * 200 + "};\n"     # a data table, not a function
        "struct S {\n"
        "  S() : a_{1}, b_(2) {\n" + body(2) + "  }\n"               # constructor with brace initializers
        "  int g() const { return a_; }\n"
        "  int a_, b_;\n"
        "};\n"
        "auto h = [](int y) {\n" + body(4) + "  return y;\n};\n"
        "}  // namespace a\n"
    )
    got = {name: last - first + 1 for name, first, last in check_sizes.functions(src)}
    assert got == {"f": 6, "S": 4, "g": 1, "h": 7}, got


def test_scanner_reports_long_functions_and_files(tmp_path):
    (tmp_path / "src" / "m").mkdir(parents=True)
    (tmp_path / "apps").mkdir()
    (tmp_path / "src" / "m" / "long.cpp").write_text("void long_one() {\n" + body(check_sizes.MAX_FUNCTION_LINES - 1)
                                                     + "}\nvoid short_one() {\n" + body(5) + "}\n")
    (tmp_path / "apps" / "big.cpp").write_text("// line\n" * (check_sizes.MAX_FILE_LINES + 1))
    assert check_sizes.scan(tmp_path) == [
        ("apps/big.cpp", "<file>", check_sizes.MAX_FILE_LINES + 1),
        ("src/m/long.cpp", "long_one", check_sizes.MAX_FUNCTION_LINES + 1),
    ]


def test_src_and_apps_keep_the_size_limits():
    allowed = check_sizes.allowed()
    found = check_sizes.scan(ROOT)
    bad = [f"{rel}: {what}: {n} lines" for rel, what, n in found if (rel, what) not in allowed]
    assert not bad, "over the limits (split them, see docs/architecture.md):\n" + "\n".join(bad)


@pytest.mark.parametrize("entry", sorted(check_sizes.ALLOWED_DATA_TABLES))
def test_every_data_table_exception_is_still_needed(entry):
    still = {(rel, what) for rel, what, _ in check_sizes.scan(ROOT)}
    assert entry in still, f"{entry} is within the limits now: remove it from ALLOWED_DATA_TABLES"
