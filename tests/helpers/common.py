"""The repository, the golden fixtures, dvc.yaml's stages, skip markers for optional packages, a free port."""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden"
DVC_STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


COMPRESS_EXTRAS = ("constriction", "zstandard", "python_minifier")
"""The packages of the ans and zstd codecs and of minification (the extra pgolf[compress])."""
PIPELINE = ("dvc", "dvclive", *COMPRESS_EXTRAS)
"""What a whole `dvc repro` of the pipeline needs beyond the core packages."""


def needs(*modules: str) -> pytest.MarkDecorator:
    """Skip unless every module can be found: the guard of a test whose former file skipped whole without them
    (``pytest.importorskip`` at module level), kept when it shares a file with tests that had no such guard."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(modules)} not installed")


def free_port() -> int:
    """A free TCP port on localhost (a gloo rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
