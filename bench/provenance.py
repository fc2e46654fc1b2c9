"""Seconds per training shard of the two ways a stage can know that no training document is a validation
document: hash every document (blake2b-128 per document, what train and calibrate did on every rank before
the tokenize stage recorded its check) or verify the file's sha256 against the manifest (what they do now).
Synthetic shards of the challenge's size (100,000,000 tokens, documents of 200-2,000 tokens), in a temporary
folder.

    python bench/provenance.py --shards 2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from pgolf.data import provenance, shards
from pgolf.data.docs import sha256_file

BOS = 1
SHARD_TOKENS = 100_000_000
FULL_SHARDS = 80  # the published FineWeb train shards


def synthetic_shard(path: Path, seed: int) -> int:
    """One shard of random documents; returns its document count."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 8192, SHARD_TOKENS, dtype=np.uint16)
    starts = np.cumsum(rng.integers(200, 2000, SHARD_TOKENS // 200))
    starts = np.concatenate([[0], starts[starts < SHARD_TOKENS]])
    tokens[starts] = BOS
    shards.write_shard(path, tokens)
    return starts.size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        docs = sum(synthetic_shard(folder / shards.shard_name("train", i), i) for i in range(args.shards))
        paths = shards.shard_paths(folder, "train")
        start = time.perf_counter()
        report = provenance.check_disjoint(paths, {}, BOS, what="bench")
        per_doc = (time.perf_counter() - start) / args.shards
        start = time.perf_counter()
        for path in paths:
            sha256_file(path)
        per_file = (time.perf_counter() - start) / args.shards
    print(f"{args.shards} shards of {SHARD_TOKENS:,} tokens, {docs:,} documents ({report['train_documents']:,} hashed)")
    print(f"hash every document: {per_doc:.2f} s/shard (x{FULL_SHARDS}: {per_doc * FULL_SHARDS:.0f} s per rank)")
    print(f"sha256 of the file:  {per_file:.2f} s/shard (x{FULL_SHARDS}: {per_file * FULL_SHARDS:.0f} s per rank)")
    print(f"ratio: {per_doc / per_file:.1f}x")


if __name__ == "__main__":
    main()
