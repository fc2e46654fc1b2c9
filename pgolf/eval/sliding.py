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
from pgolf.eval.common import ModeResult, Scores, TokenRecorder, model_device, score_windows, window_batches
from pgolf.eval.compile import Backend, CompileStats, EvalForward, batch_shapes, warmup
from pgolf.eval.documents import Document, Window, sliding_windows
from pgolf.eval.sgd import set_trainable


def document_windows(docs: list[Document], seq_len: int, stride: int) -> list[Window]:
    return [w for doc in docs for w in sliding_windows(doc, seq_len, stride)]


def fixed_model_forward(
    model: nn.Module, batches: list[list[Window]], *, seq_len: int, batch_windows: int, looped: bool,
    compile_backend: Backend,
) -> tuple[EvalForward, CompileStats]:  # fmt: skip
    """The scoring forward of a fixed model (``eval()``, frozen: the state every scoring call has, which the
    compiled graphs are guarded on), warmed up on the shapes of this rank's ``batches`` of windows."""
    model.eval()
    set_trainable(model, False)
    forward = EvalForward(model, looped, compile_backend, max_width=seq_len)
    return forward, warmup(forward, batch_shapes(forward, batches, batch_windows))


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
    compile_backend: Backend = None,
) -> ModeResult:
    """Score every target of ``docs`` once in per-document sliding windows (``stride = seq_len``: plain).
    ``model`` is left in ``eval()`` mode and frozen. ``compile_backend``: compile the forward with it (None: eager);
    the warm-up is not timed."""
    windows = document_windows(docs, seq_len, stride)
    batches = window_batches(windows, batch_windows, rank, world_size)
    forward, stats = fixed_model_forward(model, batches, seq_len=seq_len, batch_windows=batch_windows, looped=looped,
                                         compile_backend=compile_backend)  # fmt: skip
    start = time.perf_counter()
    scores = Scores(model_device(model), recorder)
    score_windows(forward, val, windows, scores, batch_windows=batch_windows, rank=rank, world_size=world_size,
                  progress=progress, desc=name)  # fmt: skip
    totals = scores.totals()
    return ModeResult(name, totals, {"eval": time.perf_counter() - start}, compile=stats.finish(name))
