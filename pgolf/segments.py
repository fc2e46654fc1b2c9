"""Varlen segment boundaries (``cu_seqlens``) of packed rows: where attention restarts.

One low module for every packer (the training loader, evaluation's flattened windows, Hessian collection, the
compile warm-up): a boundary at the row start, at every BOS, and every ``max_seq_len`` tokens inside a long
document; padded with empty segments to a multiple of :data:`CU_PAD_MULTIPLE` entries so a compiled model sees a
few static shapes. References: the record's ``_build_cu_seqlens`` (train_gpt.py L592-698).
"""

from __future__ import annotations

import numpy as np
import torch

CU_PAD_MULTIPLE = 64
"""cu_seqlens are padded to a multiple of this many entries, so a compiled model sees a few static shapes."""


def build_cu_seqlens(bos_offsets: np.ndarray, length: int, max_seq_len: int, pad_multiple: int) -> torch.Tensor:
    """Varlen segment boundaries (int32) of a packed row of ``length`` tokens.

    ``bos_offsets`` are the sorted positions of the BOS tokens in the row. Segments start at 0 (the first segment
    may be the tail of a document that began before the row), at every BOS, and every ``max_seq_len`` tokens after
    a document's start (``max_seq_len <= 0``: no cutting). The boundaries end with ``length`` and are padded with
    repeats of ``length`` (empty segments) to a multiple of ``pad_multiple`` entries, for a few static shapes.
    """
    if length <= 0 or pad_multiple <= 0:
        raise ValueError(f"length and pad_multiple must be positive, got {length} and {pad_multiple}")
    starts = np.asarray(bos_offsets, dtype=np.int64).reshape(-1)
    if starts.size and (starts[0] < 0 or starts[-1] >= length or np.any(np.diff(starts) <= 0)):
        raise ValueError(f"bos_offsets must be strictly increasing positions in [0, {length})")
    if starts.size == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    if max_seq_len > 0:
        ends = np.append(starts[1:], length)
        starts = np.concatenate([np.arange(s, e, max_seq_len) for s, e in zip(starts, ends, strict=True)])
    boundaries = np.append(starts, length)
    padded = -(-boundaries.size // pad_multiple) * pad_multiple
    cu = np.full(padded, length, dtype=np.int32)
    cu[: boundaries.size] = boundaries
    return torch.from_numpy(cu)


def window_cu_seqlens(inputs: np.ndarray, bos_id: int, pad_multiple: int = CU_PAD_MULTIPLE) -> torch.Tensor:
    """``cu_seqlens`` of a ``[B, T]`` batch of windows flattened to one stream of ``B*T`` tokens.

    Segments start at every row start and every BOS, so attention never crosses a window or a document.
    """
    num_rows, seq_len = inputs.shape
    flat = inputs.reshape(-1)
    starts = np.union1d(np.arange(0, flat.size, seq_len), np.flatnonzero(flat == bos_id))
    return build_cu_seqlens(starts, flat.size, seq_len, pad_multiple)
