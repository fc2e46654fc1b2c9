"""The one scorer: every val_bpb of the ladder comes from :func:`score_model` on the ``score`` section's documents.

Training validation, export (pre-quantization raw and averaged weights), the quantize round trip (dequantized
weights) and the evaluate stage's plain score of ``model.bin`` all call :func:`score_model` with the same
``score`` section, so each rung of the ladder differs from the one before only by what the stage did to the
weights. The evaluation modes (sliding, TTT) score the same documents; :func:`document_set` names them in every
metrics file (count, targets, bytes and a sha256 of the scored tokens and byte counts).

The score: non-overlapping windows of ``score.seq_len`` aligned to each document's start (the record's
``eval_val`` diagnostic, confined to documents; a document longer than a window restarts its context at each
window), every target scored once, sums in float64 (:mod:`pgolf.score.bpb`). It always scores fp32 parameters (a
model holding bf16 or fp16 tensors is scored through an fp32 copy of its values) under the device's autocast
(bf16 on CUDA, none on CPU), so no rung mixes in a change of compute precision: the export stage's bf16 embedding
changes the *values* scored (rounded to bf16), never the arithmetic.
"""

from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pgolf.config import Count, CountOrZero, Section
from pgolf.score.bpb import BpbTotals, ValData, load_val
from pgolf.score.compile import Backend, CompileStats, EvalForward, warmup, warmup_shapes
from pgolf.score.documents import Document, Window, sliding_windows, split_documents
from pgolf.score.scores import (
    EvalContext,
    ModeResult,
    Scores,
    eval_context,
    model_device,
    score_windows,
    set_trainable,
)


class ScoreConfig(Section):
    """params.yaml ``score``: the documents every val_bpb is measured on, and the plain score's windows."""

    docs: CountOrZero  # the first N validation documents; 0 = all (record: all 50,000)
    seq_len: Count  # record: EVAL_SEQ_LEN = 2048
    batch_windows: Count  # record: 32 windows per rank


def scored_documents(val: ValData, cfg: ScoreConfig, bos_id: int) -> list[Document]:
    """The documents every score and every mode covers: the first ``score.docs`` (0 = all)."""
    return split_documents(val.tokens, bos_id, cfg.docs)


def document_set(val: ValData, docs: list[Document]) -> dict:
    """What names a document set in a metrics file: how many documents, targets and bytes, and a sha256 of their
    tokens (uint16) and per-target byte counts (int64), so two files can be checked to score the same set."""
    if not docs:
        raise ValueError("an empty document set")
    lo, hi = docs[0].start, docs[-1].end
    digest = hashlib.sha256(np.ascontiguousarray(val.tokens[lo:hi], dtype="<u2").tobytes())
    digest.update(np.ascontiguousarray(val.target_bytes[lo + 1 : hi], dtype="<i8").tobytes())
    return {"count": len(docs), "targets": int(sum(d.num_targets for d in docs)),
            "bytes": int(val.target_bytes[lo + 1 : hi].sum()), "sha256": digest.hexdigest()}  # fmt: skip


def document_windows(docs: list[Document], seq_len: int, stride: int) -> list[Window]:
    return [w for doc in docs for w in sliding_windows(doc, seq_len, stride)]


def fp32_model(model: nn.Module) -> nn.Module:
    """``model`` itself when every floating tensor is fp32, else an fp32 copy of it (values, not arithmetic)."""
    tensors = [*model.parameters(), *model.buffers()]
    if all(t.dtype == torch.float32 for t in tensors if t.is_floating_point()):
        return model
    return copy.deepcopy(model).float()


def fixed_model_forward(
    model: nn.Module, *, seq_len: int, batch_windows: int, looped: bool, compile_backend: Backend
) -> tuple[EvalForward, CompileStats]:
    """The scoring forward of a fixed model (``eval()``, frozen: the state every scoring call has, which the
    compiled graph is guarded on), warmed up at the largest call of windows of ``seq_len`` in batches of
    ``batch_windows`` and a small one (the same on every rank)."""
    model.eval()
    set_trainable(model, False)
    forward = EvalForward(model, looped, compile_backend, max_width=seq_len)
    return forward, warmup(forward, warmup_shapes(forward, batch_windows, seq_len, seq_len))


def score_fixed(
    model: nn.Module, val: ValData, windows: list[Window], *, seq_len: int, batch_windows: int, ctx: EvalContext,
    name: str,
) -> ModeResult:  # fmt: skip
    """Score ``windows`` with ``model`` as it is (``eval()``, frozen, no_grad); the warm-up is not timed."""
    forward, stats = fixed_model_forward(model, seq_len=seq_len, batch_windows=batch_windows, looped=ctx.looped,
                                         compile_backend=ctx.compile_backend)  # fmt: skip
    start = time.perf_counter()
    scores = Scores(model_device(model), ctx.recorder)
    score_windows(forward, val, windows, scores, batch_windows=batch_windows, rank=ctx.rank,
                  world_size=ctx.world_size, progress=ctx.progress, desc=name)  # fmt: skip
    totals = scores.totals()
    return ModeResult(name, totals, {"eval": time.perf_counter() - start}, compile=stats.finish(name, forward))


def score_model(
    model: nn.Module, val: ValData, docs: list[Document], cfg: ScoreConfig, ctx: EvalContext, name: str = "plain"
) -> ModeResult:
    """The score of ``model`` on ``docs``: every rung of the ladder. ``model`` keeps its train/eval mode and its
    ``requires_grad`` flags (training validation scores the live model)."""
    scored = fp32_model(model)
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    try:
        windows = document_windows(docs, cfg.seq_len, cfg.seq_len)
        return score_fixed(scored, val, windows, seq_len=cfg.seq_len, batch_windows=cfg.batch_windows, ctx=ctx,
                           name=name)  # fmt: skip
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def rung(result: ModeResult | BpbTotals) -> dict:
    """A ladder rung for a metrics file: val_bpb, val_loss, scored tokens and bytes (and seconds of a mode)."""
    t = result.totals if isinstance(result, ModeResult) else result
    out = {"val_bpb": t.val_bpb, "val_loss": t.val_loss, "tokens": t.tokens, "bytes": t.bytes}
    if isinstance(result, ModeResult):
        out["seconds"] = round(sum(result.seconds.values()), 3)
    return out


@dataclass(frozen=True)
class Ladder:
    """The documents every rung of the ladder is scored on (the ``score`` section's), and the one way a stage scores
    a rung: training validation, export's pre-quantization rungs, quantize's dequantized rung."""

    val: ValData
    docs: list[Document]
    cfg: ScoreConfig

    @classmethod
    def load(cls, cfg: ScoreConfig, shards: Path, tokenizer: Path, bos_id: int) -> Ladder:
        """The validation data of ``shards`` (integrity-checked, :func:`pgolf.score.bpb.load_val`) and its first
        ``score.docs`` documents."""
        val = load_val(shards, tokenizer)
        return cls(val, scored_documents(val, cfg, bos_id), cfg)

    @property
    def documents(self) -> dict:
        """What names the document set in a metrics file (:func:`document_set`)."""
        return document_set(self.val, self.docs)

    def rung(self, model: nn.Module, looped: bool, name: str, progress: bool = False) -> dict:
        """The rung of ``model`` (val_bpb, val_loss, tokens, bytes) by :func:`score_model`."""
        return rung(score_model(model, self.val, self.docs, self.cfg, eval_context(looped, progress=progress), name))
