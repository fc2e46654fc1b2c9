"""The README's references to tests: every ``tests/<path>.py::<test>`` it cites (the fault table, the guarantees)
names a test function that exists, so a renamed or deleted test cannot leave a promise without its check."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CITED = re.compile(r"(tests/[\w/]+\.py)((?:::\w+)?)")
CONTINUED = re.compile(r"`::(\w+)`")  # a second test of the same file: `tests/a.py::x`, `::y`


def functions_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def cited_tests(text: str) -> list[tuple[str, str]]:
    """(file, test name or "") for each citation, ``::name`` continuations resolved to the file cited before them
    on the same line."""
    found = []
    for line in text.splitlines():
        last = None
        for m in re.finditer(rf"{CITED.pattern}|{CONTINUED.pattern}", line):
            if m.group(1):
                last = m.group(1)
                found.append((last, m.group(2).removeprefix("::")))
            elif last is not None:
                found.append((last, m.group(3)))
    return found


def test_every_test_the_readme_cites_exists():
    cited = cited_tests((ROOT / "README.md").read_text())
    assert len(cited) >= 20
    missing = []
    for rel, name in cited:
        path = ROOT / rel
        if not path.is_file():
            missing.append(rel)
        elif name and name not in functions_of(path):
            missing.append(f"{rel}::{name}")
    assert not missing, f"README.md cites tests that do not exist: {missing}"


def test_a_continued_citation_belongs_to_the_file_before_it():
    assert cited_tests("| `tests/a.py::x`, `::y` | `tests/b.py` |") == [("tests/a.py", "x"), ("tests/a.py", "y"),
                                                                       ("tests/b.py", "")]  # fmt: skip
