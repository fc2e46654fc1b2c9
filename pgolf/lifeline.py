"""A stage dies with the pipeline that started it.

When ``dvc repro`` (or a queue worker) is killed, the stage it was running must not go on and write its outputs
after a recovery run has written them: that leaves the workspace different from ``dvc.lock``. Two mechanisms, both
enforced by the process itself, never by a cooperating parent:

* **The kernel's parent-death signal** (Linux ``prctl(PR_SET_PDEATHSIG, SIGKILL)``): the stage is killed the moment
  its parent dies, with no polling and nothing left to run in Python (a kill lands between two bytes of a write at
  worst, and every output here is written to a temp file then renamed, so nothing torn is left either). The same
  holds for the stage's own children: ``lrzip`` runs under ``setpriv --pdeathsig KILL``
  (:func:`guarded`), so it dies with the stage instead of compressing on into a temporary folder.
* **A watchdog for the processes in between.** DVC starts a stage through ``$SHELL -c``, and a shell may stay as
  the parent; ``torchrun`` sits between DVC and the training ranks. The parent-death signal only covers the direct
  parent, so a daemon thread also watches each such intermediate ancestor and the process above it (the pipeline)
  every :data:`POLL_SECONDS`, and kills this process when one of them is gone (or was re-parented: its parent pid
  changed). The ranks' deaths then end ``torchrun`` too.

The polling covers what the kernel signal cannot (an ancestor two levels up) and the signal covers the common case
at once; a watchdog alone would leave up to a poll interval of work, the signal alone would miss the shell and
torchrun cases. Only a process that DVC started binds itself (an ancestor runs ``dvc``: ``dvc repro``, ``dvc exp
run``, a queue worker): a stage run by hand from a terminal (or under ``nohup``) keeps running when its shell exits,
and the DVC process itself may run detached. Elsewhere than Linux both are no-ops.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


def _linux() -> bool:
    return sys.platform.startswith("linux") and Path("/proc/self/stat").is_file()


def _stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a live process from /proc, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = raw[raw.index("(") + 1 : raw.rindex(")")], raw[raw.rindex(")") + 2 :].split()
    return name, int(rest[1])  # fields after the name: state, ppid, ...


def _argv(pid: int) -> list[str]:
    try:
        return [a.decode(errors="replace") for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        return []


def is_dvc(pid: int) -> bool:
    """Whether a process runs DVC (``dvc ...`` through its console script, or ``python -m dvc ...``)."""
    argv = _argv(pid)[:3]
    return any(Path(a).name == "dvc" for a in argv[:2]) or argv[1:3] == ["-m", "dvc"]


def watched_ancestors(pid: int | None = None) -> list[tuple[int, int | None]] | None:
    """The ancestors to watch, up to the DVC process that started this one: (pid, the parent pid it must keep) of
    each process in between (a shell, torchrun: orphaned = its parent died), then (dvc pid, None: it only has to
    live). ``[]`` when the parent is DVC itself; None when no ancestor runs DVC (a stage started by hand)."""
    stat = _stat(os.getpid() if pid is None else pid)
    chain: list[tuple[int, int | None]] = []
    parent = stat[1] if stat else 0
    while parent > 1:
        if is_dvc(parent):
            return chain + [(parent, None)] if chain else []
        above = _stat(parent)
        if above is None:
            return None
        chain.append((parent, above[1]))
        parent = above[1]
    return None


def _set_parent_death_signal(sig: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(ancestors: list[tuple[int, int | None]], poll: float) -> None:
    while True:
        time.sleep(poll)
        for pid, ppid in ancestors:
            stat = _stat(pid)
            if stat is None or (ppid is not None and stat[1] != ppid):
                os.kill(os.getpid(), signal.SIGKILL)


def die_with_parent(poll: float = POLL_SECONDS) -> bool:
    """When DVC started this process, bind its life to DVC's (module docstring); returns whether it did (Linux
    only, and only under DVC)."""
    if not _linux():
        return False
    parent = os.getppid()
    ancestors = watched_ancestors()
    if ancestors is None or not _set_parent_death_signal(signal.SIGKILL):
        return False
    if os.getppid() != parent or parent == 1:  # the parent died before the signal was armed
        os.kill(os.getpid(), signal.SIGKILL)
    if ancestors:
        threading.Thread(target=_watch, args=(ancestors, poll), name="lifeline", daemon=True).start()
    return True


def guarded(cmd: list[str]) -> list[str]:
    """``cmd`` run so that the kernel kills it when this process dies (``setpriv --pdeathsig KILL``, util-linux;
    unchanged where there is no setpriv)."""
    setpriv = shutil.which("setpriv") if _linux() else None
    return [setpriv, "--pdeathsig", "KILL", "--", *cmd] if setpriv else list(cmd)
