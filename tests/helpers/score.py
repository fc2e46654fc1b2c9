"""A synthetic validation stream (unique ids, random documents and bytes), token-only models, and the one scorer's
totals of a token-only model."""

from __future__ import annotations

import math

import numpy as np
import torch

from pgolf.score.bpb import ValData
from pgolf.score.scorer import scored_documents
from pgolf.score.scores import EvalContext
from pgolf.score.unigram import score_token_model
from tests.helpers.config import score_cfg

BOS = 1
VOCAB = 50


def synthetic_val(length=1000, seed=0) -> ValData:
    """Unique ids (2 + position) except BOS at random document starts; random bytes, 0 on BOS targets."""
    rng = np.random.default_rng(seed)
    tokens = (2 + np.arange(length)).astype(np.uint16)
    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, length), size=length // 20, replace=False))])
    tokens[starts] = BOS
    target_bytes = rng.integers(1, 6, size=length).astype(np.int64)
    target_bytes[starts] = 0
    return ValData(tokens, target_bytes, "sidecar")


IDS = 2048  # every synthetic id (2 + position) is below this
UNIFORM = torch.full((IDS,), -math.log(VOCAB), dtype=torch.float64)
DYADIC = -((torch.arange(IDS) % 4) + 1).double() * 0.25  # nats exact in float64 whatever the summation order


def score(log_probs, val, seq_len=16, batch_windows=5, docs=0, rank=0, world_size=1):
    """The one scorer's totals for a token-only model (the same windows and sums as :func:`score_model`)."""
    cfg = score_cfg(docs=docs, seq_len=seq_len, batch_windows=batch_windows)
    return score_token_model(log_probs, val, scored_documents(val, cfg, BOS), cfg, EvalContext(False, rank, world_size))
