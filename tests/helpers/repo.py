"""A scratch git repository of the working tree, for tests that run DVC on the real pipeline."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers.common import ROOT

GIT = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]


def scratch_repo(dest: Path) -> None:
    """A git repository holding the working tree's files (tracked, and untracked but not ignored)."""
    ls = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]
    files = subprocess.run(ls, cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()
    for rel in files:
        if (ROOT / rel).is_file():  # a tracked file deleted in the working tree stays out
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run([*GIT, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*GIT, "commit", "-qm", "scratch"], cwd=dest, check=True)
