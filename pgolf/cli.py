"""Entry-point helper for stage scripts: input errors print one clear line instead of a traceback."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from pgolf.errors import PgolfError


def run(main: Callable[[], None]) -> None:
    """Call a stage's ``main``; a :class:`PgolfError` or missing file exits with status 1 and its message. A stage
    ends with one line of its wall time (``<module>: done in 12.3 s``), on rank 0 only under torchrun."""
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
