"""The submission program ``train_gpt.py``: one self-extracting Python file whose bytes are the counted code.

It holds, compressed, the sources of the whole program the challenge counts: every stage from the tokenizer's
adoption of the challenge's files to the evaluation (tokenizer, tokenize, train, export, calibrate, quantize,
compress, evaluate: the import closure of the entry scripts in :data:`ENTRIES`, package ``__init__`` files
included), as the record's ``train_gpt.py`` holds its GPTQ and its compressor; then the run's params and a call of
``stages/program.py``. Data preparation and tokenizer training stay outside, as in the challenge. Started in any
directory, it writes those files back (``pgolf/...``, ``stages/...``; each atomically, so torchrun's ranks can
write the same files at once) and runs the stages (:mod:`stages.program`). Its shape is the challenge's two-line
wrapper (``import lzma as L,base64 as B`` + ``exec(L.decompress(...))``, base85 text, the #1492/#2143 style; or
brotli, the record's) around a small program that writes the files.

Only what the run's params use is packed: a module of :data:`SWITCHES` whose switch is off is left out, with
everything only it imports (the modules that use it import it inside the function that needs it).

Minification (python-minifier) drops docstrings and comments, renames function locals and drops the annotations of
arguments, returns and variables; it keeps global names, class attributes, argument names and class attribute
annotations: pydantic builds each config section (and ``dataclasses`` each dataclass) from its class's annotated
attributes at run time, the stages pass arguments by keyword, and ``torch.library.custom_op`` reads an op's schema
from its function's annotations (a file defining one keeps them all).

Unlike the record, whose wrapper length was computed but never written, this file is real: the bundle stage
writes it, the size stage counts the bytes of the file on disk, and a test runs it in an empty directory.
"""

from __future__ import annotations

import ast
import base64
import copy
import lzma
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import brotli
import yaml
from pydantic import Field

from pgolf.config import Section, dotted
from pgolf.errors import PgolfError

PROGRAM_FILE = "train_gpt.py"
"""The counted code: what the bundle stage writes to ``artifacts/submission/`` and a records folder holds."""
ENTRIES = (
    "stages/program.py",
    "stages/tokenizer.py",
    "stages/tokenize.py",
    "stages/train.py",
    "stages/export.py",
    "stages/calibrate.py",
    "stages/quantize.py",
    "stages/compress.py",
    "stages/evaluate.py",
)
"""The program's entry point and the stages it runs, in order (imported by name, so listed)."""
PACKAGES = ("pgolf", "stages")

_WRAPPERS = {
    "base85": ('import {codec} as L,base64 as B\nexec(L.decompress(B.b85decode("', '")))\n'),
    "latin1": ("#coding:latin-1\nimport {codec} as L\nexec(L.decompress('", "'.encode('latin-1')))\n"),
}
_ESCAPES = {0: "\\x00", 10: "\\n", 13: "\\r", 39: "\\'", 92: "\\\\"}
"""The bytes a latin-1 string literal cannot hold as themselves: NUL (no source may contain it), the line ends
(Python reads \\r\\n and \\r as \\n), the quote and the backslash."""
_WRITER = (
    "import os\n"
    "for p,s in F.items():\n"
    " d=os.path.dirname(p)\n"
    " if d:os.makedirs(d,exist_ok=True)\n"
    " t=f'{p}.{os.getpid()}';open(t,'w',encoding='utf-8').write(s);os.replace(t,p)\n"
)


class BundleConfig(Section):
    codec: Literal["lzma", "brotli"]
    minify: bool = Field(description="strip docstrings and comments with python-minifier (names kept)")
    text: Literal["base85", "latin1"] = Field(
        description="how the compressed program is written: base85 (ASCII, the challenge's wrappers: +25%) or "
        "latin1 (the bytes themselves in a latin-1 string literal, a few escaped: +2%; not ASCII)"
    )


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


def import_closure(root: Path, scripts: tuple[str, ...] | list[str], skip: frozenset[Path] = frozenset()) -> set[Path]:
    """Every package file reachable by imports from ``scripts`` (relative to ``root``), scripts excluded, not
    entering the files of ``skip``."""
    todo, seen = [root / s for s in scripts], set()
    while todo:
        for file in imported_files(root, todo.pop()):
            if file not in seen and file not in skip:
                seen.add(file)
                todo.append(file)
    return seen


@dataclass(frozen=True)
class Switch:
    """A module the submission program carries only when the params use it; the modules that use it import it
    inside the function that needs it."""

    module: str
    key: str | None
    """The params key that decides (None: never in the program)."""
    on: Callable[[object], bool] = bool


SWITCHES = (
    Switch("pgolf/quant/hadamard.py", "quantize.hadamard"),
    Switch("pgolf/quant/awq.py", "quantize.awq.enabled"),
    Switch("pgolf/train/qat.py", "train.qat.enabled"),
    Switch("pgolf/train/checkpoint.py", "train.checkpoint_seconds", lambda seconds: seconds > 0),
    Switch("pgolf/kernels/mlp.py", "model.fused_mlp", lambda mode: mode == "triton"),
    Switch("pgolf/eval/sliding.py", "eval.sliding.enabled"),
    Switch("pgolf/eval/lora_ttt.py", "eval.lora_ttt.enabled"),
    Switch("pgolf/eval/chunk_sgd.py", "eval", lambda e: e["chunk_sgd"]["enabled"] or e["multi_phase"]["enabled"]),
    Switch("pgolf/eval/multi_phase.py", "eval.multi_phase.enabled"),
    Switch(
        "pgolf/eval/sgd.py", "eval", lambda e: any(e[m]["enabled"] for m in ("lora_ttt", "chunk_sgd", "multi_phase"))
    ),
    Switch("pgolf/eval/ngram.py", "eval.lora_ttt", lambda t: t["enabled"] and t["ngram_tilt"]["enabled"]),
    Switch("pgolf/eval/ngram_audit.py", "eval.lora_ttt", lambda t: t["enabled"] and t["ngram_tilt"]["enabled"]),
    Switch("pgolf/compress/entropy.py", "compress.codec", lambda codec: codec == "ans"),
    Switch("pgolf/data/prepare.py", None),  # data preparation: outside the counted program, as in the challenge
    Switch("pgolf/data/encode.py", None),  # the program adopts the challenge's shards; it never encodes documents
    Switch("pgolf/data/tokenizer_train.py", None),  # it adopts the challenge's tokenizer; it never trains one
    Switch("pgolf/data/hub.py", None),  # the program adopts the challenge's files; it never downloads
    Switch("pgolf/lease.py", None),  # the device lease of a shared box: the pipeline's, never a submission's
)
"""The modules the params switch on, and the key of each."""


def left_out(params: dict | None) -> list[str]:
    """The modules of :data:`SWITCHES` that ``params`` leave out (None: any params, only the never-carried ones)."""
    return [s.module for s in SWITCHES if s.key is None or (params is not None and not s.on(dotted(params, s.key)))]


def bundle_files(root: Path, params: dict | None = None, entries: tuple[str, ...] = ENTRIES) -> list[str]:
    """The relative paths packed for ``params`` (None: every switch on, what any params may carry, the bundle
    stage's dependencies): the entry scripts and the switched-on
    modules (a mode is imported by name when it runs, so no import reaches it), their import closure without the
    switched-off modules, and the packages' ``__init__`` files."""
    off = left_out(params)
    skip = frozenset(root / m for m in off)
    roots = (*entries, *(s.module for s in SWITCHES if s.module not in off and (root / s.module).is_file()))
    files = {root / e for e in roots} | import_closure(root, roots, skip)
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
    # Class attribute annotations are the fields of pydantic sections and dataclasses: kept. Arguments', returns'
    # and variables' annotations are read by nothing at run time but torch.library.custom_op (an op's schema).
    strip = "custom_op(" not in source
    annotations = python_minifier.RemoveAnnotationsOptions(
        remove_variable_annotations=strip, remove_return_annotations=strip, remove_argument_annotations=strip,
        remove_class_attribute_annotations=False,
    )  # fmt: skip
    return python_minifier.minify(
        source, remove_annotations=annotations, remove_pass=False, remove_literal_statements=True,
        combine_imports=True, hoist_literals=False, rename_locals=True, rename_globals=False,
        remove_object_base=False, convert_posargs_to_args=False, preserve_shebang=False,
        remove_asserts=False, remove_debug=False, remove_explicit_return_none=False,
    )  # fmt: skip


def build(root: Path, cfg: BundleConfig, files: list[str], then: str = "") -> str:
    """The bundle's text for ``files`` under ``root``; ``then``: Python run after the files are written (a
    packaged program's entry point)."""
    sources = {}
    for rel in files:
        text = (root / rel).read_text(encoding="utf-8")
        sources[rel] = _minify(text) if cfg.minify and text.strip() else text
    program = f"F={sources!r}\n{_WRITER}{then}".encode()
    packed = lzma.compress(program, preset=9 | lzma.PRESET_EXTREME) if cfg.codec == "lzma" else (
        brotli.compress(program, quality=11))  # fmt: skip
    head, tail = _WRAPPERS[cfg.text]
    body = base64.b85encode(packed).decode("ascii") if cfg.text == "base85" else latin1_literal(packed)
    return head.format(codec=cfg.codec) + body + tail


def latin1_literal(data: bytes) -> str:
    """The body of a single-quoted literal of a latin-1 source that ``.encode('latin-1')`` turns back into
    ``data``: each byte as the character of that code, but :data:`_ESCAPES`."""
    return "".join(_ESCAPES.get(b) or chr(b) for b in data)


def packaged_params(params: dict, variant: str | None = None) -> dict:
    """The run's params with the data taken from the challenge's layout (``fineweb_cached`` of ``variant``)."""
    params = copy.deepcopy(params)
    params["data"].update(source="fineweb_cached", variant=variant or params["data"]["variant"])
    return params


def program(params: dict, root: Path) -> str:
    """The text of ``train_gpt.py`` for a run's ``params``: the bundle of what they use, then the entry point
    (:func:`stages.program.main` of :func:`packaged_params`)."""
    packaged = packaged_params(params)
    cfg = BundleConfig.model_validate(params["bundle"])
    return build(root, cfg, bundle_files(root, packaged), then=entry_point(packaged))


def entry_point(packaged: dict) -> str:
    """What the program runs once its files are written: :func:`stages.program.main` of the packaged params."""
    text = yaml.safe_dump(packaged, sort_keys=False)
    return (
        f"import importlib,sys\nimportlib.invalidate_caches()\nsys.path.insert(0,'')\n"
        f"from pgolf.cli import run\nfrom stages.program import main\nrun(lambda:main({text!r}))\n"
    )
