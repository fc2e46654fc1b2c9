"""The package's floor plan: every ``import`` inside ``pgolf/`` runs downward in the order the README's layout
section declares (its block of ``pgolf/...`` lines, bottom to top), and nothing in ``pgolf/`` imports ``stages/``."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def declared_order() -> list[str]:
    """The units (top-level modules and packages of pgolf) in the README's layout block, bottom first."""
    readme = (ROOT / "README.md").read_text()
    block = readme.split("**The library, bottom to top.**", 1)[1].split("```", 2)[1]
    return [m.group(1) for line in block.splitlines() if (m := re.match(r"pgolf/(\w+)(?:\.py|/)\s", line))]


def unit_of(path: Path) -> str:
    rel = path.relative_to(ROOT / "pgolf")
    return rel.parts[0].removesuffix(".py")


def imported_units(path: Path) -> set[str]:
    """The pgolf units a file imports (absolute ``pgolf.x`` and ``from pgolf import x``; relative imports resolve
    inside the file's own unit)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + ([f"pgolf.{a.name}" for a in node.names] if node.module == "pgolf" else [])
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "stages":
                found.add("stages")
            elif parts[0] == "pgolf" and len(parts) > 1:
                found.add(parts[1])
    return found


FILES = sorted((ROOT / "pgolf").rglob("*.py"))


def test_the_readme_declares_every_unit_once():
    order = declared_order()
    units = {unit_of(f) for f in FILES if unit_of(f) != "__init__"}
    assert len(order) == len(set(order)), order
    assert set(order) == units, f"README misses {units - set(order)}, names unknown {set(order) - units}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_downward(path):
    order = {unit: rank for rank, unit in enumerate(declared_order())}
    here = unit_of(path)
    if here == "__init__":
        return
    for dst in imported_units(path):
        assert dst != "stages", f"{path.relative_to(ROOT)} imports stages/ (the library never calls a stage)"
        assert dst in order, f"{path.relative_to(ROOT)} imports pgolf.{dst}, which the README's layout does not list"
        assert order[dst] <= order[here], (
            f"{path.relative_to(ROOT)} ({here}) imports pgolf.{dst}, which the README's layout puts above it"
        )
