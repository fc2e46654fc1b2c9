"""What every command-line entry point shares: the one-line error instead of a traceback, and the stages' paths.

Every stage script (``stages/<stage>.py``) has one shape: a frozen ``Paths`` dataclass whose fields are its files
and folders with their defaults (each becomes a ``--flag``, :func:`parse_paths`), a ``run(paths)`` that loads its
params sections, calls the library and writes its outputs and metrics, and a ``main`` run through :func:`run`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from pgolf.errors import PgolfError

P = TypeVar("P")


def parse_paths(paths: type[P], description: str | None, argv: Sequence[str] | None = None) -> P:
    """An instance of the dataclass ``paths`` from the command line: every field is a ``--field-name`` flag
    (underscores become dashes) holding a path, its default the field's."""
    parser = argparse.ArgumentParser(description=description)
    for f in dataclasses.fields(paths):  # type: ignore[arg-type]
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=Path, default=Path(f.default))
    return paths(**vars(parser.parse_args(argv)))


def run(main: Callable[[], None]) -> None:
    """Call an entry point's ``main``; a :class:`PgolfError` or missing file exits with status 1 and its message.
    A stage ends with one line of its wall time (``<module>: done in 12.3 s``), on rank 0 only under torchrun."""
    start = time.perf_counter()
    try:
        main()
    except (PgolfError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("-")
    dist = sys.modules.get("pgolf.dist")  # a stage that never imported it runs as one process
    if script.parent.name == "stages" and (dist is None or dist.dist_info().is_main):
        name = script.stem
        print(f"{name}: done in {time.perf_counter() - start:.1f} s")
