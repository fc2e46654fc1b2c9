"""Where and how a stage ran: its run card, the ``run`` entry of the stage's metrics.

* ``hardware``: the device the stage computed on (``NVIDIA H100 80GB HBM3``, ``cpu``), how many (the processes of
  a torchrun job, one device each; 1 for a stage without a process group or a stage that computes on the CPU
  only) and the machine's CPU count; no hostname;
* ``versions``: python, torch, CUDA (torch's build; None without), Triton, FlashAttention-3 and DVC (None where not
  installed), read from the installed packages' metadata without importing them;
* ``commit`` and ``dirty``: the git commit of the checkout holding the ``pgolf`` package that ran, and whether its
  code (``pgolf/``, ``stages/``) differs from that commit, untracked files included (``unknown`` both where the
  package is not at the top of a git checkout, e.g. a records folder's ``train_gpt.py``);
* ``wall_seconds``: the stage's own clock, from the start of its work (after the device lease) to its metrics.

Kept out of every artifact (the same seed gives the same bytes on any machine at any commit); the stages write it
into their metrics only. The summary turns the cards into device-seconds and a cost (:mod:`pgolf.report.summary`).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import time
from pathlib import Path

from pgolf.dist import DistInfo, lease_environment

ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the ``pgolf`` package (and ``stages/`` beside it in a checkout)."""
CODE = ("pgolf", "stages")
"""The code whose changes make a checkout ``dirty``; params and data are DVC's to track."""
PACKAGES = {"torch": "torch", "triton": "triton", "flash_attn_3": "flash_attn_3", "dvc": "dvc"}
"""Version key -> the distribution whose version it is."""
FA3_MODULE = "flash_attn_interface"
"""The module FlashAttention-3 installs (what :mod:`pgolf.model.attention` imports)."""


def _git(*args: str) -> str | None:
    """git's stdout in :data:`ROOT`, stripped; None when git is missing or fails."""
    try:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def _in_checkout() -> bool:
    """Whether :data:`ROOT` is the top of a git checkout (not a folder inside someone else's)."""
    top = _git("rev-parse", "--show-toplevel")
    return top is not None and Path(top).resolve() == ROOT


def code_version() -> str:
    """The git commit of the code (``unknown`` outside a checkout)."""
    return (_git("rev-parse", "HEAD") if _in_checkout() else None) or "unknown"


def code_dirty() -> bool | str:
    """Whether the code (``pgolf/``, ``stages/``) differs from its commit, untracked files included (``unknown``
    outside a checkout)."""
    status = _git("status", "--porcelain", "--", *CODE) if _in_checkout() else None
    return "unknown" if status is None else bool(status)


def package_version(distribution: str) -> str | None:
    """The installed version of ``distribution``, None when it is not installed (nothing is imported)."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """python, torch, CUDA (the one torch was built with), Triton, FlashAttention-3 and DVC."""
    import torch  # every stage that writes metrics has imported it already

    found = {key: package_version(dist) for key, dist in PACKAGES.items()}
    if found["flash_attn_3"] is None and importlib.util.find_spec(FA3_MODULE) is not None:
        found["flash_attn_3"] = "unknown"  # importable, built without package metadata
    return {"python": platform.python_version(), "torch": found["torch"], "cuda": torch.version.cuda,
            "triton": found["triton"], "flash_attn_3": found["flash_attn_3"], "dvc": found["dvc"]}  # fmt: skip


def hardware(info: DistInfo | None = None) -> dict:
    """The device the stage computed on and how many (``info``'s; the CPU, once, without one) and the CPU count."""
    if info is None:
        return {"device": "cpu", "devices": 1, "cpus": os.cpu_count()}
    return {"device": info.device_name, "devices": info.world_size, "cpus": os.cpu_count()}


def run_card(started: float, info: DistInfo | None = None) -> dict:
    """The stage's run card (see the module docstring); ``started``: ``time.perf_counter()`` when its work began,
    ``info``: its process group and device (None for a stage that computes on the CPU only)."""
    return {"hardware": hardware(info), "versions": versions(), "commit": code_version(), "dirty": code_dirty(),
            "wall_seconds": round(time.perf_counter() - started, 3)}  # fmt: skip


def take_lease(num_devices: int = 1) -> None:
    """The device lease of a shared box (:func:`pgolf.lease.acquire`) when ``PGOLF_LEASE_DIR`` is set; imported
    only then (the submission program, which never takes it, does not carry it)."""
    if lease_environment().get("PGOLF_LEASE_DIR"):
        from pgolf import lease

        lease.acquire(num_devices)
