"""The data fingerprint auditors look at first: how many training shards, how many validation tokens and targets,
and a hash of the validation stream.

15 of 34 CaseOps submissions were voided for training on shards that held 80% of the validation documents
(#2127); the audit (#2146) read two log lines first: ``train_shards: 80`` (a leaky local preparation showed 1499)
and ``val_tokens: 47851520``, the targets scored at the record's evaluation length (the stream minus one token,
cut down to a multiple of 2048). The tokenize stage records the same figures for every source
(:func:`fingerprint`), and for the published shards of a known variant says which differ from the published
ones (:func:`published_check`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pgolf.data import shards

EVAL_SEQ_LEN = 2048
"""The record's evaluation length: its ``val_tokens`` line counts the targets of whole 2048-token windows."""

PUBLISHED = {
    "sp8192_lossless_caps_caseops_v1_reserved": {"train_shards": 80, "val_targets": 47_851_520},  # #1855, #2146
    "sp8192": {"train_shards": 128, "val_targets": 40_540_160},  # kevclark/parameter-golf fineweb10B_sp8192
    "sp1024": {"val_targets": 62_021_632},  # fineweb10B_sp1024
}
"""The figures the challenge's logs print for the published shards of each variant."""


def val_targets(val_tokens: int, seq_len: int = EVAL_SEQ_LEN) -> int:
    """The targets of the whole ``seq_len`` windows of a validation stream of ``val_tokens`` tokens."""
    return max(val_tokens - 1, 0) // seq_len * seq_len


def fingerprint(shard_dir: Path) -> dict:
    """Train shards and tokens, validation tokens and targets, and the sha256 of the validation token stream (the
    val shards' token ids, concatenated as uint16 little-endian, headers excluded)."""
    train = shards.shard_paths(shard_dir, "train")
    digest, val_tokens = hashlib.sha256(), 0
    for path in shards.shard_paths(shard_dir, "val"):
        values = shards.read_shard(path, mmap=True)
        digest.update(memoryview(values).cast("B"))
        val_tokens += values.size
    train_tokens = sum(shards.read_header(p) for p in train)
    return {"train_shards": len(train), "train_tokens": train_tokens, "val_tokens": val_tokens,
            "val_targets": val_targets(val_tokens), "val_sha256": digest.hexdigest()}  # fmt: skip


def published_check(found: dict, variant: str) -> dict | None:
    """For a variant with published figures: each one's value here and there, and which differ (None: none
    published). A cut run that fetched fewer training shards differs, and says so."""
    published = PUBLISHED.get(variant)
    if published is None:
        return None
    differs = [key for key, value in published.items() if found[key] != value]
    return {"variant": variant, "published": published, "differs": differs, "matches": not differs}
