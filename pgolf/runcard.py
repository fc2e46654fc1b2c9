"""Where a stage's numbers came from: the code's commit (and whether the tree was clean).

Kept out of every artifact (the same seed gives the same bytes on any machine at any commit); the stages write it
into their metrics only.
"""

from __future__ import annotations

import subprocess


def code_version() -> str:
    """The git commit of the code (``unknown`` outside a checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip()
