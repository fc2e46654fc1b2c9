"""Sliding-window evaluation of a fixed model, confined to documents (``eval.sliding``).

#1492 / #1802 ``eval_val_sliding``: windows of ``seq_len`` start every ``stride`` tokens; the first window scores
all its targets, each later one only its last ``stride`` targets, so every target is scored once with up to
``seq_len - 1`` tokens of context. Deliberate difference: the reference slides over the flat val stream and lets
context cross documents; our contract is that attention never crosses a document, so we slide inside each document
(context = own-document tokens only, a document's first targets have short context). With ``stride = seq_len``
this is the plain score (:func:`pgolf.score.scorer.score_model`).

Windows are sorted by length and batched; batches go round-robin to ranks; sums are all-reduced once.
"""

from __future__ import annotations

from torch import nn

from pgolf.eval.config import SlidingConfig
from pgolf.score.bpb import ValData
from pgolf.score.documents import Document
from pgolf.score.scorer import document_windows, score_fixed
from pgolf.score.scores import EvalContext, ModeResult


def evaluate_sliding(
    model: nn.Module, val: ValData, docs: list[Document], cfg: SlidingConfig, ctx: EvalContext
) -> ModeResult:
    """Score every target of ``docs`` once in per-document sliding windows; ``model`` is left in ``eval()`` mode
    and frozen."""
    windows = document_windows(docs, cfg.seq_len, cfg.stride)
    return score_fixed(model, val, windows, seq_len=cfg.seq_len, batch_windows=cfg.batch_windows, ctx=ctx,
                       name="sliding")  # fmt: skip
