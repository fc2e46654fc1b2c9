"""#1802 multi-phase global TTT (``eval_val_mp_ttt``): NOT a compliant evaluation, kept as a measured contrast.

Phase 0 scores every target with sliding windows (= :func:`pgolf.eval.sliding.evaluate_sliding`). Then, ``passes``
times: a fresh SGD (momentum) sweeps *all* chunks of the scored documents' stream, one step per chunk with a cosine
lr and no last-chunk guard, and every target is scored again. The reported figure is the last re-score, made by a
model trained on the very tokens it scores: it breaks score-before-update (Issue #1017 conditions 1 and 3; PR #991
precedent). The result therefore carries ``passes + 1`` scoring passes (reported ``violated``) and every phase's
figure; the score-first audit (:mod:`pgolf.eval.audit`) fails on it by construction. Deliberate difference
from #1802: windows and training
sequences stay inside documents, like every mode here.
"""

from __future__ import annotations

import time

from torch import nn

from pgolf.eval.chunk_sgd import stream_of
from pgolf.eval.config import MultiPhaseConfig
from pgolf.eval.sgd import train_stream
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.documents import Document
from pgolf.score.scorer import document_windows, fixed_model_forward
from pgolf.score.scores import (
    EvalContext,
    ModeResult,
    Scores,
    model_device,
    score_windows,
)


def evaluate_multi_phase(
    model: nn.Module, val: ValData, docs: list[Document], cfg: MultiPhaseConfig, ctx: EvalContext
) -> ModeResult:
    """Score, then ``passes`` times (train on everything, re-score); ``model`` is adapted in place (pass a copy).
    Every scoring pass is sliding (:func:`pgolf.eval.sliding.evaluate_sliding`) through one warmed-up forward."""
    _, stream = stream_of(val, docs)
    windows = document_windows(docs, cfg.seq_len, cfg.stride)
    forward, stats = fixed_model_forward(model, seq_len=cfg.seq_len, batch_windows=cfg.batch_windows,
                                         looped=ctx.looped, compile_backend=ctx.compile_backend)  # fmt: skip
    start = time.perf_counter()

    def score(phase: int) -> BpbTotals:
        scores = Scores(model_device(model), ctx.recorder)
        score_windows(forward, val, windows, scores, batch_windows=cfg.batch_windows, rank=ctx.rank,
                      world_size=ctx.world_size, progress=ctx.progress, desc=f"multi_phase/{phase}")  # fmt: skip
        return scores.totals()

    totals = score(0)
    phases = [{"phase": 0, "val_bpb": totals.val_bpb, "val_loss": totals.val_loss}]
    for phase in range(1, cfg.passes + 1):
        train_stream(model, stream, cfg.sgd(), ctx, skip_last_chunk=False)
        totals = score(phase)
        phases.append({"phase": phase, "val_bpb": totals.val_bpb, "val_loss": totals.val_loss})
    return ModeResult("multi_phase", totals, {"eval": time.perf_counter() - start}, passes=cfg.passes + 1,
                      phases=phases, compile=stats.finish("multi_phase", forward))  # fmt: skip
