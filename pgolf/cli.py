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
from typing import NoReturn, TypeVar

from pgolf import lifeline
from pgolf.errors import PgolfError

P = TypeVar("P")


def _module_name() -> str:
    """The dotted module of the running script (``stages.train``, ``pgolf.report.exps``), for messages."""
    parts = Path(sys.argv[0]).with_suffix("").parts if sys.argv and sys.argv[0] else ()
    for root in ("stages", "pgolf"):
        if root in parts:
            return ".".join(parts[len(parts) - 1 - parts[::-1].index(root) :])
    return Path(parts[-1]).name if parts else "pgolf"


class Parser(argparse.ArgumentParser):
    """argparse for every entry point, whose complaint about the arguments is one ``error:`` line and exit 1, like
    every other error (argparse's own: a usage block and exit 2)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("prog", f"python -m {_module_name()}")
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message} (see --help)", file=sys.stderr)
        sys.exit(1)


def parse_paths(paths: type[P], description: str | None, argv: Sequence[str] | None = None) -> P:
    """An instance of the dataclass ``paths`` from the command line: every field is a ``--field-name`` flag
    (underscores become dashes) holding a path, its default the field's."""
    parser = Parser(description=description)
    for f in dataclasses.fields(paths):  # type: ignore[arg-type]
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, type=Path, default=Path(f.default))
    return paths(**vars(parser.parse_args(argv)))


def run(main: Callable[[], None]) -> None:
    """Call an entry point's ``main``; a :class:`PgolfError` or an OS error (a missing file, a folder it may not
    write) exits with status 1 and one ``error:`` line.
    A stage started by DVC first binds its life to DVC's (:mod:`pgolf.lifeline`: killed with it, never writing
    after it), and ends with one line of its wall time (``<module>: done in 12.3 s``), on rank 0 only under
    torchrun."""
    start = time.perf_counter()
    script = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path("-")
    if script.parent.name == "stages":
        lifeline.die_with_parent()
    try:
        main()
    except (PgolfError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
    dist = sys.modules.get("pgolf.dist")  # a stage that never imported it runs as one process
    if script.parent.name == "stages" and (dist is None or dist.dist_info().is_main):
        name = script.stem
        print(f"{name}: done in {time.perf_counter() - start:.1f} s")
