"""Process-group setup for torchrun, and rank-0 printing.

This is the only module that reads the environment: torchrun's RANK, WORLD_SIZE and LOCAL_RANK. A run without
torchrun is a single process of rank 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job."""

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def dist_info() -> DistInfo:
    """Read torchrun's variables; defaults describe a single process."""
    if "RANK" not in os.environ:
        return DistInfo(rank=0, world_size=1, local_rank=0)
    return DistInfo(
        rank=int(os.environ["RANK"]),
        world_size=int(os.environ["WORLD_SIZE"]),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def print0(*args: object, **kwargs: object) -> None:
    """print() on rank 0 only."""
    if dist_info().is_main:
        print(*args, **kwargs, flush=True)  # type: ignore[call-overload]
