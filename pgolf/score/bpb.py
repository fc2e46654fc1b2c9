"""Bits per byte: the challenge's metric, its three sums, and the validation data it is counted on.

A model's score is how many bits it needs, per byte of original text, to encode the validation set::

    val_bpb = total nats / (ln 2 * total original UTF-8 bytes)

summed over every scored target token. Dividing by bytes instead of tokens makes the figure independent of the
tokenizer (a CaseOps tokenizer needs 18% more tokens for the same text; ``val_loss`` in nats per token is not
comparable across tokenizers, ``val_bpb`` is). The bytes charged to a target are the original bytes *that token*
stands for, indexed by target position: ``target_bytes[i]`` is charged for predicting ``tokens[i]``. A BOS target
(the prediction that a document ends) adds its nats and its token but 0 bytes; CaseOps operators add 0 bytes too.
Sums are kept in float64 per rank and all-reduced once; per-rank bpbs are never averaged.

Where the bytes come from (:func:`load_val`):

* the validation byte sidecar ``val_bytes_*.bin`` when present: exact for any tokenizer, CaseOps included;
* otherwise the tokenizer lookup tables (the challenge's convention for the published shards): ``base_bytes`` of
  the target plus one for a leading "▁" unless the previous token is a boundary. These overcount CaseOps operators
  (3 bytes each instead of 0, ~9% of the denominator), so a CaseOps tokenizer without a sidecar is an error.

The scorer that sums these (one for every rung of the ladder) is :func:`pgolf.score.scorer.score_model`.

References: the record's ``ValidationData``, ``build_sentencepiece_luts``, ``_loss_bpb`` and ``eval_val``
(train_gpt.py l. 450–535, 2726–2795); nanochat ``loss_eval.evaluate_bpb``. The pitfalls this avoids: a shard glob that
catches the sidecar, LUT bytes on CaseOps, input-indexed bytes, double counting, context across documents,
truncating the stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist

from pgolf.data import shards
from pgolf.data import tokenizer as tok
from pgolf.dist import active
from pgolf.errors import PgolfError

ByteCount = Literal["sidecar", "tokenizer_luts"]


def loss_to_bpb(nats: float, bytes_: int) -> float:
    """Bits per byte of ``nats`` summed over targets that stand for ``bytes_`` original bytes."""
    if bytes_ <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {bytes_}")
    return nats / (math.log(2) * bytes_)


@dataclass
class BpbTotals:
    """The three sums behind the metric: nats (float64), scored target tokens and their original bytes."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    @property
    def val_loss(self) -> float:
        """Mean nats per scored target token."""
        if self.tokens <= 0:
            raise ValueError("no tokens were scored")
        return self.nats / self.tokens

    @property
    def val_bpb(self) -> float:
        return loss_to_bpb(self.nats, self.bytes)

    def all_reduce(self) -> BpbTotals:
        """The totals summed over all ranks (one float64 all-reduce); a copy when not distributed.

        Returns a new object, so the local sums are never reduced twice.
        """
        if not active():
            return BpbTotals(self.nats, self.tokens, self.bytes)
        on_gpu = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        # Integers below 2**53 are exact in float64.
        sums = torch.tensor([self.nats, self.tokens, self.bytes], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        nats, tokens, bytes_ = sums.tolist()
        return BpbTotals(nats, round(tokens), round(bytes_))


@dataclass
class ValData:
    """The validation stream and the original bytes charged for predicting each of its tokens."""

    tokens: np.ndarray  # uint16 (or any integer) token ids, documents as BOS + ids
    target_bytes: np.ndarray  # int64; target_bytes[i] is charged for predicting tokens[i]; [0] = 0 (never a target)
    byte_count: ByteCount

    def __post_init__(self) -> None:
        if self.tokens.shape != self.target_bytes.shape or self.tokens.ndim != 1:
            shapes = f"tokens {self.tokens.shape}, target_bytes {self.target_bytes.shape}"
            raise ValueError(f"{shapes}: both must be 1-D and of equal length")


def check_manifest(shard_dir: Path, meta: dict) -> dict:
    """The tokenize stage's manifest of ``shard_dir`` (fail closed: :func:`pgolf.data.shards.read_manifest`), after
    checking that it was made with this tokenizer, that its byte count's files are there, and that every val shard
    and byte sidecar is the file it wrote (:func:`pgolf.data.shards.verify`)."""
    manifest, where = shards.read_manifest(shard_dir), shard_dir / shards.MANIFEST_FILE
    made_by, ours = manifest.get("tokenizer_sha256"), meta.get("model_sha256")
    if made_by is None or made_by != ours:
        raise PgolfError(f"{where}: the shards were made by tokenizer {made_by}, not by this one ({ours}); re-run "
                         "`dvc repro tokenize`")  # fmt: skip
    if manifest.get("byte_count") not in ("sidecar", "tokenizer_luts"):
        raise PgolfError(f"{where}: byte_count is {manifest.get('byte_count')!r}, not sidecar or tokenizer_luts; "
                         "re-run `dvc repro tokenize`")  # fmt: skip
    shards.verify(shard_dir, manifest, ("val", "val_bytes"))
    return manifest


def load_val(shard_dir: Path | str, tokenizer_dir: Path | str) -> ValData:
    """The val tokens (``val_*.bin`` only, never the sidecar) with bytes from the sidecar or the tokenizer LUTs."""
    shard_dir = Path(shard_dir)
    meta = tok.read_meta(tokenizer_dir)
    manifest = check_manifest(shard_dir, meta)
    vocab = meta["vocab_size"]
    if manifest["byte_count"] == "sidecar":
        tokens, counts = shards.load_val_with_bytes(shard_dir, vocab_size=vocab)
        target_bytes = counts.astype(np.int64)
        target_bytes[:1] = 0
        return ValData(tokens, target_bytes, "sidecar")
    if meta["caseops"]:
        raise PgolfError(
            f"{shard_dir}: the tokenizer uses CaseOps but there is no val_bytes_*.bin sidecar; the lookup-table "
            "byte count would charge 3 bytes per case operator (0 original bytes) and inflate the denominator by "
            "~9%; re-run the tokenize stage, which writes the sidecar"
        )
    tokens = shards.load_shards(shard_dir, "val", vocab_size=vocab)
    target_bytes = np.concatenate([[0], tok.lut_bytes(tokens, tok.load_luts(tokenizer_dir))]).astype(np.int64)
    return ValData(tokens, target_bytes, "tokenizer_luts")
