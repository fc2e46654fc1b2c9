"""Process-group setup for torchrun, rank-0 printing and the few collectives the stages need.

This is the only module that reads or sets the environment: torchrun's RANK, WORLD_SIZE and LOCAL_RANK (and the
copy handed to child processes), and the device lease's variables (:mod:`pgolf.lease`), which sets
CUDA_VISIBLE_DEVICES for itself and its children through :func:`export_environment`. A run without torchrun is a
single process of rank 0 and needs no process group; every helper here is then a no-op.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist


@dataclass
class _Job:
    """The process group's users in this process: nested :func:`init`/:func:`shutdown` pairs share one group (the
    submission program holds it across its stages), and :func:`alone` hides it from a one-process stage."""

    holders: int = 0
    alone: bool = False


_JOB = _Job()


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device_name(self) -> str:
        """The device this process computes on, e.g. ``NVIDIA H100 80GB HBM3`` or ``cpu``."""
        return torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"

    @property
    def hardware(self) -> str:
        """What the job runs on, e.g. ``8x NVIDIA H100 80GB HBM3`` or ``1x cpu``."""
        return f"{self.world_size}x {self.device_name}"


def dist_info() -> DistInfo:
    """Read torchrun's variables (defaults describe a single process) and pick the device."""
    rank = 0 if _JOB.alone else int(os.environ.get("RANK", "0"))
    world = 1 if _JOB.alone else int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device)


def subprocess_env(**overrides: str) -> dict[str, str]:
    """This process's environment with ``overrides``, for a child process (e.g. ``LRZIP=NOCONFIG`` for lrzip)."""
    return {**os.environ, **overrides}


LEASE_VARIABLES = ("PGOLF_LEASE_DIR", "PGOLF_LEASE_DEVICES", "PGOLF_LEASE_SLOTS", "PGOLF_LEASE_HELD",
                   "CUDA_VISIBLE_DEVICES", "LOCAL_RANK")  # fmt: skip
"""What :mod:`pgolf.lease` reads: its settings, the devices already visible, and whether torchrun started us."""


def lease_environment() -> dict[str, str]:
    """The :data:`LEASE_VARIABLES` that are set, by name."""
    return {name: os.environ[name] for name in LEASE_VARIABLES if name in os.environ}


def export_environment(**values: str) -> None:
    """Set variables for this process and every child it starts (the lease's CUDA_VISIBLE_DEVICES)."""
    os.environ.update(values)


def init(timeout_seconds: float | None = None) -> DistInfo:
    """Set up the process group when launched by torchrun with more than one process (nccl on CUDA, else gloo),
    its collectives waiting ``timeout_seconds`` (``train.dist_timeout_seconds``; None: torch's default)."""
    info = dist_info()
    if info.device.type == "cuda":
        torch.cuda.set_device(info.device)
        torch.set_float32_matmul_precision("high")  # TF32 for fp32 matmuls, as the record
        torch.backends.cudnn.allow_tf32 = True
    if info.world_size > 1:
        if not dist.is_initialized():
            backend = "nccl" if info.device.type == "cuda" else "gloo"
            timeout = None if timeout_seconds is None else timedelta(seconds=timeout_seconds)
            dist.init_process_group(backend, device_id=info.device if backend == "nccl" else None, timeout=timeout)
        _JOB.holders += 1
    return info


def shutdown() -> None:
    """Wait for every rank; the last holder of the group (see :func:`init`) destroys it."""
    if not active():
        return
    dist.barrier()
    _JOB.holders -= 1
    if _JOB.holders <= 0:
        dist.destroy_process_group()
        _JOB.holders = 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Run a one-process stage on rank 0 while the job's process group lives (the submission program's export,
    quantize, compress): inside, this process is rank 0 of 1, with no collectives, as when DVC starts the stage
    with ``python``. The other ranks wait at the next :func:`barrier`."""
    _JOB.alone = True
    try:
        yield
    finally:
        _JOB.alone = False


def group_rank_world() -> tuple[int, int]:
    """(rank, world_size) of the initialized default process group, or (0, 1) without one (or :func:`alone`)."""
    if active():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def active() -> bool:
    """Whether collectives run: a process group of more than one rank, not hidden by :func:`alone`."""
    return not _JOB.alone and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """Average tensors across ranks in place, flattened into one buffer per dtype (one collective each)."""
    _all_reduce_flat(tensors, average=True)


def all_reduce_sum(tensors: list[torch.Tensor]) -> None:
    """Sum tensors across ranks in place (one collective per dtype)."""
    _all_reduce_flat(tensors, average=False)


def _all_reduce_flat(tensors: list[torch.Tensor], average: bool) -> None:
    if not active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if average:
            flat /= dist.get_world_size()
        for t, chunk in zip(group, flat.split([t.numel() for t in group]), strict=True):
            t.copy_(chunk.view_as(t))


def all_reduce_max(tensor: torch.Tensor) -> None:
    """The elementwise max over ranks, in place (nothing without a process group)."""
    if active():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)


def barrier() -> None:
    if active():
        dist.barrier()


def all_max(value: float, device: torch.device) -> float:
    """The largest ``value`` over ranks, on every rank (so ranks agree on time-driven decisions)."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (NaN aborts)."""
    return all_max(1.0 if flag else 0.0, device) > 0


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_device(batch: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host batch (tokens, masks, ``cu_seqlens``) on ``device``: through pinned memory and a non-blocking copy
    on CUDA, so the copy overlaps the work already queued; unchanged on the CPU."""
    tensor = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def print0(*args: object, **kwargs: object) -> None:
    """print() on rank 0 only."""
    if dist_info().is_main:
        print(*args, **kwargs, flush=True)  # type: ignore[call-overload]
