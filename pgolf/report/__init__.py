"""Reports: the run at a glance (``summary``, which the summary stage writes) and the experiment tooling around the
pipeline, each a command (``python -m pgolf.report.<name> --help``): the experiment table, seed significance,
challenge records folders, offline plot rendering. Only ``summary`` is imported by a stage, and the summary stage
is not part of the counted code. The commands' packages (scipy, vl-convert-python, dvc) are imported where they are
used, so the modules import without them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pgolf.errors import PgolfError


def optional_import(module: str, requirement: str, extra: str) -> ModuleType:
    """``module``, or an error naming the package and the pip line when it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise PgolfError(
            f'this command needs {module} ({err}): pip install "{requirement}" (in the extra pgolf[{extra}])'
        ) from err
