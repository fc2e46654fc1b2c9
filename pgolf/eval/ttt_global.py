"""#1802 multi-phase global TTT (``eval_val_mp_ttt``): NOT a compliant evaluation, kept as a measured contrast.

Phase 0 scores every target with sliding windows (= :func:`pgolf.eval.sliding.evaluate_sliding`). Then, ``passes``
times: a fresh SGD (momentum) sweeps *all* chunks of the scored documents' stream, one step per chunk with a cosine
lr and no last-chunk guard, and every target is scored again. The reported figure is the last re-score, made by a
model trained on the very tokens it scores: it breaks score-before-update (Issue #1017 conditions 1 and 3; PR #991
precedent). The result therefore carries ``compliant=False`` and every phase's figure; the score-first audit
(:mod:`pgolf.eval.audit`) fails on it by construction. Deliberate difference from #1802: windows and training
sequences stay inside documents, like every mode here.
"""

from __future__ import annotations

import time

from torch import nn

from pgolf.eval.bpb import ValData
from pgolf.eval.common import ModeResult, TokenRecorder
from pgolf.eval.config import MultiPhaseConfig
from pgolf.eval.documents import Document
from pgolf.eval.sgd import train_stream
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.ttt_chunk import stream_of


def evaluate_multi_phase(
    model: nn.Module,
    val: ValData,
    docs: list[Document],
    cfg: MultiPhaseConfig,
    *,
    looped: bool,
    rank: int = 0,
    world_size: int = 1,
    recorder: TokenRecorder | None = None,
    progress: bool = False,
) -> ModeResult:
    """Score, then ``passes`` times (train on everything, re-score); ``model`` is adapted in place (pass a copy)."""
    start = time.perf_counter()
    _, stream = stream_of(val, docs)

    def score(phase: int) -> ModeResult:
        return evaluate_sliding(model, val, docs, seq_len=cfg.seq_len, stride=cfg.stride,
                                batch_windows=cfg.batch_windows, looped=looped, name=f"multi_phase/{phase}",
                                rank=rank, world_size=world_size, recorder=recorder, progress=progress)  # fmt: skip

    result = score(0)
    phases = [{"phase": 0, "val_bpb": result.totals.val_bpb, "val_loss": result.totals.val_loss}]
    for phase in range(1, cfg.passes + 1):
        train_stream(model, stream, lr=cfg.lr, momentum=cfg.momentum, epochs=1, chunk_tokens=cfg.chunk_tokens,
                     seq_len=cfg.seq_len, grad_clip=cfg.grad_clip, skip_last_chunk=False, looped=looped,
                     bos_id=model.cfg.bos_id, rank=rank, world_size=world_size)  # fmt: skip
        result = score(phase)
        phases.append({"phase": phase, "val_bpb": result.totals.val_bpb, "val_loss": result.totals.val_loss})
    return ModeResult("multi_phase", result.totals, {"eval": time.perf_counter() - start}, compliant=False,
                      phases=phases)  # fmt: skip
