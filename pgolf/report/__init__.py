"""Experiment tooling outside the pipeline: seed significance, challenge records folders, offline plot rendering.

Each module is a command (``python -m pgolf.report.<name> --help``); none of them is a DVC stage, and none is
imported by a stage, so they are not part of the code bundle. Their packages (scipy, vl-convert-python, dvc) are
imported where they are used, so the modules import without them.
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
