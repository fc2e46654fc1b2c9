"""Validation documents and the windows every evaluation mode scores them in.

A document starts at a BOS and its slice ends with the *next* document's BOS (the end-of-document prediction,
0 bytes), exactly as the record's ``_find_docs``: document i is ``tokens[s_i : s_(i+1) + 1]`` and its targets are
the stream positions ``s_i + 1 .. s_(i+1)``. Over all documents the targets partition ``1 .. len - 1``. The last
document of the stream has no trailing BOS. Unlike the record we never truncate the stream to a multiple of a
sequence length: every mode scores whole documents, the first ``max_docs`` of them, so all modes score the same set.
So #2014's ``EVAL_INCLUDE_TAIL=1`` (#2014) is always on, with no key: the last document's targets
up to the stream's last token are scored like any other (tests/eval/test_lora_ttt.py checks it for LoRA TTT).

A *window* is one row of model input: ``(start, length, lo, hi)`` = input tokens ``tokens[start : start + length]``
(``start`` is a stream position), of which the targets at row offsets ``lo .. hi - 1`` are scored. Windows never
cross a document. :func:`gather` turns a list of windows into padded ``[B, T]`` rows of input (pad id 0 after the
valid prefix, which causal attention never looks at) and, for the scored targets only, ``[B, K]`` arrays: their row
offsets (``cols``: the model computes its head, soft-cap and loss there and nowhere else), the targets, the scored
mask, their stream positions and the bytes charged to them (indexed by target position, never by input
position). K is the most targets a row scores: a TTT chunk's 48 of a 2048-token window, a sliding window's
stride, every position of a plain window.

References: the record's ``_find_docs`` (documents) and its TTT chunk windows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pgolf.dist import to_device
from pgolf.errors import PgolfError
from pgolf.score.bpb import ValData

PAD_ID = 0
Window = tuple[int, int, int, int]  # (stream start, input length, first scored offset, end of scored offsets)
EMPTY_WINDOW: Window = (0, 0, 0, 0)  # a row of padding only (fills a batch up to a compiled shape)


@dataclass(frozen=True)
class Document:
    """One validation document: its BOS at stream position ``start`` and ``num_targets`` targets after it."""

    index: int
    start: int
    num_targets: int  # the record's pred_len = slice length - 1 (includes the next BOS)

    @property
    def end(self) -> int:
        """One past the last target's stream position."""
        return self.start + self.num_targets + 1


def split_documents(tokens: np.ndarray, bos_id: int, max_docs: int = 0) -> list[Document]:
    """The documents of a val stream (the first ``max_docs`` of them; 0 = all)."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id)
    if starts.size == 0 or starts[0] != 0:
        raise PgolfError(f"the validation stream must start with BOS (id {bos_id}); re-run the tokenize stage")
    ends = np.append(starts[1:], len(tokens) - 1)  # the last target of each document
    docs = [Document(i, int(s), int(e - s)) for i, (s, e) in enumerate(zip(starts, ends, strict=True))]
    if any(d.num_targets < 1 for d in docs):
        raise PgolfError("the validation stream has an empty document (two BOS in a row, or a trailing BOS)")
    return docs[:max_docs] if max_docs > 0 else docs


def sliding_windows(doc: Document, seq_len: int, stride: int) -> list[Window]:
    """#1492's sliding window inside one document: the first window scores all its targets, each later window
    (advanced by ``stride``) only its new ones, so every target is scored once with up to ``seq_len - 1`` tokens
    of own-document context (at least ``seq_len - stride`` once the document is longer than ``seq_len``)."""
    n = doc.num_targets
    ends = [min(seq_len, n)]
    while ends[-1] < n:
        ends.append(min(ends[-1] + stride, n))
    windows, prev = [], 0
    for end in ends:
        begin = max(0, end - seq_len)
        windows.append((doc.start + begin, end - begin, prev - begin, end - begin))
        prev = end
    return windows


def chunk_window(doc: Document, chunk: int, chunk_size: int, context: int) -> Window:
    """The record's window for chunk ``chunk`` of a document: its targets ``chunk*C+1 .. chunk_end`` with
    up to ``context`` own-document tokens ending at the chunk end. Empty once the document has no such chunk."""
    lo = chunk * chunk_size
    if lo >= doc.num_targets:
        return (doc.start, 0, 0, 0)
    end = min(lo + chunk_size, doc.num_targets)
    begin = max(0, end - context)
    return (doc.start + begin, end - begin, lo - begin, end - begin)


def num_chunks(doc: Document, chunk_size: int) -> int:
    return -(-doc.num_targets // chunk_size)


@dataclass
class Rows:
    """A padded batch of windows: the input rows ``[B, T]`` and the scored targets ``[B, K]``. Integer arrays are
    numpy; :meth:`tensors` moves what the model reads."""

    inputs: np.ndarray  # [B, T] int64
    cols: np.ndarray  # [B, K] int64 row offset of each scored target (padding repeats a row's last; mask False)
    targets: np.ndarray  # [B, K] int64
    mask: np.ndarray  # [B, K] bool, the scored targets
    positions: np.ndarray  # [B, K] int64 stream position of each target (only meaningful where mask)
    target_bytes: np.ndarray  # [B, K] int64, 0 outside the mask

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Inputs, targets, the scored mask and the columns on ``device`` (pinned, non-blocking copies on CUDA)."""
        return tuple(to_device(a, device) for a in (self.inputs, self.targets, self.mask, self.cols))  # type: ignore


def gather(val: ValData, windows: list[Window], width: int | None = None, scored: int | None = None) -> Rows:
    """The rows of some windows, padded at the end to ``width`` input tokens (default: the longest window) and to
    ``scored`` targets per row (default: the most a window scores)."""
    w = np.asarray(windows, dtype=np.int64).reshape(-1, 4)
    width = int(w[:, 1].max(initial=1)) if width is None else width
    counts = np.maximum(w[:, 3] - w[:, 2], 0) * (w[:, 1] > 0)
    k = np.arange(int(counts.max(initial=1)) if scored is None else scored)
    mask = k < counts[:, None]
    cols = w[:, 2:3] + np.minimum(k, np.maximum(counts[:, None] - 1, 0))
    positions = np.where(mask, w[:, :1] + cols + 1, 0)  # target stream positions
    tokens = val.tokens
    offsets = np.arange(width)
    valid = offsets < w[:, 1:2]
    inputs = np.where(valid, tokens[np.where(valid, w[:, :1] + offsets, 0)], PAD_ID).astype(np.int64)
    targets = np.where(mask, tokens[positions], PAD_ID).astype(np.int64)
    target_bytes = np.where(mask, val.target_bytes[positions], 0).astype(np.int64)
    return Rows(inputs, cols.astype(np.int64), targets, mask, positions, target_bytes)


def length_batches(windows: list[Window], batch: int) -> list[list[Window]]:
    """Windows sorted by length (longest first, stable) and cut into batches: little padding per batch."""
    ordered = sorted(windows, key=lambda w: -w[1])
    return [ordered[i : i + batch] for i in range(0, len(ordered), batch)]


def rank_share(items: list, rank: int, world_size: int) -> list:
    """Round-robin share of ``rank``: items ``rank, rank + world, ...`` (balanced when items are sorted by cost)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return items[rank::world_size]
