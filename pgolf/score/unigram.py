"""The ladder's floor: an add-one-smoothed unigram model counted on the training shards, scored through the same
windows and sums as every other rung (:func:`pgolf.score.scorer.score_model`), so a model's gain over
"predict each token by its frequency" reads off the ladder directly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pgolf.data import shards as shard_io
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.documents import Document, Rows, Window, gather
from pgolf.score.scorer import Ladder, ScoreConfig, document_windows, rung
from pgolf.score.scores import EvalContext, Scores, eval_context, score_windows

MAX_TOKENS = 100_000_000
"""Training tokens counted (a prefix of the shards): the counts settle long before."""


def unigram_log_probs(shard_dir: Path, vocab_size: int, max_tokens: int = MAX_TOKENS) -> torch.Tensor:
    """log p(token) of an add-one-smoothed unigram model counted on the training shards (the first max_tokens)."""
    counts = np.ones(vocab_size, dtype=np.int64)
    seen = 0
    for path in shard_io.shard_paths(shard_dir, "train"):
        tokens = shard_io.read_shard(path, vocab_size=vocab_size, mmap=True)[: max_tokens - seen]
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        seen += len(tokens)
        if seen >= max_tokens:
            break
    return torch.from_numpy(np.log(counts) - np.log(counts.sum()))


class TokenModelForward:
    """A scoring forward for a model of the target token alone (``log_probs[target]``), through the same windows
    and sums as :func:`pgolf.score.scorer.score_model`."""

    compiled = False

    def __init__(self, log_probs: torch.Tensor) -> None:
        self.log_probs = log_probs
        self.device = log_probs.device

    def gather(self, val: ValData, windows: list[Window]) -> Rows:
        return gather(val, windows)

    def __call__(self, inputs: torch.Tensor, targets: torch.Tensor, cols: torch.Tensor | None = None) -> torch.Tensor:
        return -self.log_probs[targets]


def score_token_model(
    log_probs: torch.Tensor, val: ValData, docs: list[Document], cfg: ScoreConfig, ctx: EvalContext
) -> BpbTotals:
    """The totals of a token-only model on ``docs`` in :func:`~pgolf.score.scorer.score_model`'s windows."""
    scores = Scores(log_probs.device)
    windows = document_windows(docs, cfg.seq_len, cfg.seq_len)
    score_windows(TokenModelForward(log_probs), val, windows, scores, batch_windows=cfg.batch_windows, rank=ctx.rank,
                  world_size=ctx.world_size)  # fmt: skip
    return scores.totals()


def unigram_rung(ladder: Ladder, shard_dir: Path, vocab_size: int, device: torch.device) -> dict:
    """The unigram baseline's rung on the ladder's documents."""
    log_probs = unigram_log_probs(shard_dir, vocab_size).to(device)
    return rung(score_token_model(log_probs, ladder.val, ladder.docs, ladder.cfg, eval_context(looped=False)))
