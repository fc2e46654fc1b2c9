"""Plain and sliding-window evaluation of a fixed model, confined to documents.

* Sliding (#1492 / #1802 ``eval_val_sliding``): windows of ``seq_len`` start every ``stride`` tokens; the first
  window scores all its targets, each later one only its last ``stride`` targets, so every target is scored once
  with up to ``seq_len - 1`` tokens of context. Deliberate difference: the reference slides over the flat val
  stream and lets context cross documents; our contract is that attention never crosses a document, so we slide
  inside each document (context = own-document tokens only, a document's first targets have short context).
* Plain (the record's ``eval_val``): the same with ``stride = seq_len``, i.e. non-overlapping windows; here aligned
  to each document's start instead of to the stream (A5), so it scores exactly the same targets as every other mode.

Windows are sorted by length and batched; batches go round-robin to ranks; sums are all-reduced once.
"""

from __future__ import annotations

import time

from torch import nn

from pgolf.eval.bpb import ValData
from pgolf.eval.common import ModeResult, Scores, TokenRecorder, model_device, score_windows
from pgolf.eval.documents import Document, Window, sliding_windows


def document_windows(docs: list[Document], seq_len: int, stride: int) -> list[Window]:
    return [w for doc in docs for w in sliding_windows(doc, seq_len, stride)]


def evaluate_sliding(
    model: nn.Module,
    val: ValData,
    docs: list[Document],
    *,
    seq_len: int,
    stride: int,
    batch_windows: int,
    looped: bool,
    name: str = "sliding",
    rank: int = 0,
    world_size: int = 1,
    recorder: TokenRecorder | None = None,
    progress: bool = False,
) -> ModeResult:
    """Score every target of ``docs`` once in per-document sliding windows (``stride = seq_len``: plain)."""
    start = time.perf_counter()
    model.eval()
    scores = Scores(model_device(model), recorder)
    windows = document_windows(docs, seq_len, stride)
    score_windows(model, val, windows, scores, batch_windows=batch_windows, looped=looped, rank=rank,
                  world_size=world_size, progress=progress, desc=name)  # fmt: skip
    totals = scores.totals()
    return ModeResult(name, totals, {"eval": time.perf_counter() - start})
