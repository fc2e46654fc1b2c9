"""JSON files that stages and artifacts carry: one writer and one reader for all of them.

:func:`write_json` writes atomically (a temp file beside the target, then a rename), so a killed stage never
leaves a torn metrics or meta file that a later stage or ``dvc metrics show`` would misread. :func:`read_json`
names the file and the stage that writes it when it is missing or unreadable.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from pgolf.errors import PgolfError


def write_json(path: Path | str, data: Any, *, sort_keys: bool = False, ensure_ascii: bool = True) -> None:
    """``data`` as indented JSON (one trailing newline) at ``path``, parents created, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=2, sort_keys=sort_keys, ensure_ascii=ensure_ascii) + "\n"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_json(path: Path | str, stage: str | None = None) -> Any:
    """The JSON at ``path``; a missing or malformed file is an error naming it (and ``stage``, which writes it)."""
    path = Path(path)
    fix = f"run `dvc repro {stage}`" if stage else "restore it"
    if not path.is_file():
        raise PgolfError(f"{path}: not found; {fix} first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PgolfError(f"{path}: not valid JSON ({err}); {fix}") from None


def fresh_dir(path: Path | str) -> Path:
    """``path`` as an empty folder (removed first when it exists): a stage's output folder before it writes."""
    path = Path(path)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def write_csv(path: Path | str, columns: list[str], rows: list[dict]) -> None:
    """A plot table (``dvc plots``): a header of ``columns``, then one line per row (``str`` of each value, "" for a
    missing one); the values are numbers and plain names, never quoted."""
    lines = [",".join(columns)] + [",".join(str(row.get(c, "")) for c in columns) for row in rows]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
