"""Entry-point helper for stage scripts: input errors print one clear line instead of a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable

from pgolf.errors import PgolfError


def run(main: Callable[[], None]) -> None:
    """Call a stage's ``main``; a :class:`PgolfError` or missing file exits with status 1 and its message."""
    try:
        main()
    except (PgolfError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(1)
