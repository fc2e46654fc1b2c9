"""The code bundle: one self-extracting Python file whose bytes are the code bytes counted toward the limit.

The bundle holds, compressed, the sources of the whole program the challenge counts: every stage from training
to evaluation (train, export, calibrate, quantize, compress, evaluate: the import closure of the entry scripts in
:data:`ENTRIES`, package ``__init__`` files included), as the record's ``train_gpt.py`` holds its GPTQ and its
compressor. Data preparation and tokenizer training stay outside, as in the challenge. ``python pgolf_code.py``
in any directory writes those files back (``pgolf/...``, ``stages/...``) and nothing else; the stages then run
from there (``python -m stages.evaluate``). Its shape is the challenge's two-line wrapper (``import lzma as
L,base64 as B`` + ``exec(L.decompress(...))``, base85 text, the #1492/#2143 style; or brotli, the record's)
around a small program that writes the files.

Optional minification (python-minifier) drops docstrings and comments but keeps names and annotations (pydantic
reads annotations at run time, so removing them would change behaviour).

Unlike the record, whose wrapper length was computed but never written, this
file is real: the size stage counts the bytes of the file on disk, and a test runs it in an empty directory.
"""

from __future__ import annotations

import ast
import base64
import lzma
from pathlib import Path
from typing import Literal

import brotli
from pydantic import Field

from pgolf.config import Section
from pgolf.errors import PgolfError

BUNDLE_FILE = "pgolf_code.py"
PROGRAM_FILE = "train_gpt.py"
"""The submission program a records folder holds (:mod:`pgolf.report.package`, ``stages/program.py``)."""
ENTRIES = (
    "stages/train.py",
    "stages/export.py",
    "stages/calibrate.py",
    "stages/quantize.py",
    "stages/compress.py",
    "stages/evaluate.py",
)
"""The program's stages, training to evaluation, in the order they run."""
PACKAGES = ("pgolf", "stages")

_WRAPPERS = {
    "lzma": ('import lzma as L,base64 as B\nexec(L.decompress(B.b85decode("', '")))\n'),
    "brotli": ('import brotli as L,base64 as B\nexec(L.decompress(B.b85decode("', '")))\n'),
}
_WRITER = (
    "import os\n"
    "for p,s in F.items():\n"
    " d=os.path.dirname(p)\n"
    " if d:os.makedirs(d,exist_ok=True)\n"
    " open(p,'w',encoding='utf-8').write(s)\n"
)


class BundleConfig(Section):
    codec: Literal["lzma", "brotli"]
    minify: bool = Field(description="strip docstrings and comments with python-minifier (names kept)")


def module_file(root: Path, name: str) -> Path | None:
    """The file of dotted module ``name`` under ``root`` (a module or a package's __init__), if any."""
    base = root / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_files(root: Path, path: Path) -> set[Path]:
    """The files of :data:`PACKAGES` that ``path`` imports directly (absolute imports)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name.split(".")[0] in PACKAGES and (file := module_file(root, name)):
                found.add(file)
    return found


def import_closure(root: Path, scripts: tuple[str, ...] | list[str]) -> set[Path]:
    """Every package file reachable by imports from ``scripts`` (relative to ``root``), scripts excluded."""
    todo, seen = [root / s for s in scripts], set()
    while todo:
        for file in imported_files(root, todo.pop()):
            if file not in seen:
                seen.add(file)
                todo.append(file)
    return seen


def bundle_files(root: Path, entries: tuple[str, ...] = ENTRIES) -> list[str]:
    """The relative paths packed: the entry scripts, their import closure and the packages' ``__init__`` files."""
    files = {root / e for e in entries} | import_closure(root, entries)
    for f in list(files):
        for parent in f.relative_to(root).parents:
            if str(parent) != "." and (init := root / parent / "__init__.py").is_file():
                files.add(init)
    return sorted(str(f.relative_to(root)) for f in files)


def _minify(source: str) -> str:
    try:
        import python_minifier  # only the bundle stage minifies; training and evaluation never import it
    except ImportError:
        raise PgolfError("the python-minifier package is not installed (needed by bundle.minify: true): "
                         "install it with `pip install python-minifier`, or set `bundle.minify: false`"
                         ) from None  # fmt: skip
    return python_minifier.minify(
        source, remove_annotations=False, remove_pass=False, remove_literal_statements=True,
        combine_imports=True, hoist_literals=False, rename_locals=False, rename_globals=False,
        remove_object_base=False, convert_posargs_to_args=False, preserve_shebang=False,
        remove_asserts=False, remove_debug=False, remove_explicit_return_none=False,
    )  # fmt: skip


def build(root: Path, cfg: BundleConfig, files: list[str] | None = None, then: str = "") -> str:
    """The bundle's text for ``files`` (default :func:`bundle_files`) under ``root``; ``then``: Python run after
    the files are written (a packaged program's entry point)."""
    sources = {}
    for rel in files if files is not None else bundle_files(root):
        text = (root / rel).read_text(encoding="utf-8")
        sources[rel] = _minify(text) if cfg.minify and text.strip() else text
    program = f"F={sources!r}\n{_WRITER}{then}".encode()
    packed = lzma.compress(program, preset=9 | lzma.PRESET_EXTREME) if cfg.codec == "lzma" else (
        brotli.compress(program, quality=11))  # fmt: skip
    head, tail = _WRAPPERS[cfg.codec]
    return head + base64.b85encode(packed).decode("ascii") + tail
