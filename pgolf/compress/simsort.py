"""Greedy L1 nearest-neighbour row order (the record's ``simsort``).

Start at row 0; repeatedly append the unused row with the smallest L1 distance to the last appended row (ties to
the lowest row index). Similar rows become neighbours, which a context-mixing or LZ coder (lrzip ZPAQ, brotli) can
exploit once the matrix is stored column by column. The cost is O(rows^2 * cols) (the record's tok_emb, 8192 x 512,
takes seconds here, 33 s in the record's numpy). An order-0 entropy coder gains nothing from any row order, so the
permutation (about log2(rows!) bits, nearly incompressible) is pure overhead there.

Reference: the record's ``_similarity_sort_l1`` (PR #1855).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor


def similarity_order(q: Tensor) -> np.ndarray:
    """The greedy L1 nearest-neighbour order of the rows of a 2-D integer tensor (int64 indices)."""
    if q.ndim != 2:
        raise ValueError(f"similarity_order needs a 2-D tensor, got shape {tuple(q.shape)}")
    if q.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    with torch_threads(1):  # thousands of small reductions: thread hand-off costs more than it saves
        return _greedy_order(q)


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch at ``count`` intra-op threads in this thread, the previous setting back afterwards.

    torch keeps this per thread, and a thread takes the process-wide value (the last one set anywhere) at its
    first parallel op. So a pool whose jobs sort is opened inside ``torch_threads(1)``: its threads then all start,
    save and restore at one thread, and the overlapping restores cannot leave another value behind.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _greedy_order(q: Tensor) -> np.ndarray:
    n = q.shape[0]
    rows = q.to(torch.int16).clone()  # remaining rows, compacted by moving the last row into a taken slot
    index = torch.arange(n)  # original index of each remaining row
    order = [0]
    cur = rows[0].clone()
    rows[0], index[0] = rows[n - 1], index[n - 1]
    remaining = n - 1
    for _ in range(n - 1):
        dist = (rows[:remaining] - cur).abs().sum(dim=1, dtype=torch.int32)
        best = dist.min()
        ties = torch.nonzero(dist == best).flatten()
        j = int(ties[index[ties].argmin()])  # lowest original index among the ties
        order.append(int(index[j]))
        cur = rows[j].clone()
        remaining -= 1
        rows[j], index[j] = rows[remaining], index[remaining]
    return np.array(order, dtype=np.int64)


def inverse(order: np.ndarray) -> np.ndarray:
    """inv with inv[order[k]] = k, so ``sorted_rows[inv]`` restores the original row order."""
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size, dtype=order.dtype)
    return inv
