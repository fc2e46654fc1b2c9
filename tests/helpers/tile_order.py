"""The program-to-tile order of the Triton matmul (:func:`pgolf.kernels._triton._grouped_tile`), read back by a
one-store kernel, and the grouped order written as loops (imports triton: used in the interpreter process only)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from pgolf.kernels._triton import _grouped_tile


@triton.jit
def _tile_of_each_program(out_ptr, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    pid_m, pid_n = _grouped_tile(pid, M, N, BM, BN, GROUP_M)
    tl.store(out_ptr + 2 * pid, pid_m)
    tl.store(out_ptr + 2 * pid + 1, pid_n)


def kernel_order(M: int, N: int, bm: int, bn: int, group_m: int) -> list[tuple[int, int]]:
    """(row tile, column tile) of each program of the kernel's 1-D grid, in program order."""
    programs = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    out = torch.full((programs, 2), -1, dtype=torch.int32)
    _tile_of_each_program[(programs,)](out, M, N, BM=bm, BN=bn, GROUP_M=group_m)
    return [tuple(row) for row in out.tolist()]


def grouped_order(num_m: int, num_n: int, group_m: int) -> list[tuple[int, int]]:
    """The grouped order: ``group_m`` row tiles down each column tile in turn, then the next ``group_m`` rows (the
    last group holds what is left)."""
    order = []
    for first in range(0, num_m, group_m):
        rows = min(group_m, num_m - first)
        order += [(first + r, col) for col in range(num_n) for r in range(rows)]
    return order
