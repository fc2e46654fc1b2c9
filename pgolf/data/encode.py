"""Documents -> token shards (the tokenize stage), with the validation byte sidecar.

Every document becomes ``[BOS] + ids`` (no EOS). Encoding runs on all cores (one SentencePiece per worker
process), in document order. For validation documents each token also gets the number of *original* UTF-8 bytes
it accounts for: token ``i`` covers the bytes up to its end offset in the encoded text that the previous tokens
did not cover, each transformed byte weighted by :func:`pgolf.data.caseops.original_byte_weights` (CaseOps
operators weigh 0). The last token takes the document's tail, so the counts of a document sum to its UTF-8 length
exactly, for any tokenizer and normalization; BOS counts 0. (The reference replays the CaseOps decoder over piece
surfaces and loses bytes that the normalizer drops.)

For ``fineweb_cached`` the published shards are adopted instead: linked, and checked for format, vocabulary range,
BOS and sidecar alignment.

Either way the content hash of every validation document is written next to the shards (``val_hashes.txt``, see
:mod:`pgolf.data.provenance`) and summarised in the manifest under ``val_hashes``, so that the stages reading the
training shards can check that they hold no validation document.
"""

from __future__ import annotations

import itertools
import multiprocessing
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
import sentencepiece as spm
from tqdm import tqdm

from pgolf.data import caseops, docs, shards
from pgolf.data import tokenizer as tok

BATCH_DOCS = 256

_worker: dict = {}


@dataclass
class EncodedBatch:
    tokens: np.ndarray  # [BOS] + ids for each document, concatenated
    byte_counts: np.ndarray | None  # original UTF-8 bytes per token (val only)
    docs: int
    roundtrip_failures: int


def _init_worker(model_path: str, use_caseops: bool, check_roundtrip: bool) -> None:
    _worker.update(sp=spm.SentencePieceProcessor(model_file=model_path), caseops=use_caseops, check=check_roundtrip)


def doc_byte_counts(original: str, transformed: str, ends: list[int], use_caseops: bool) -> np.ndarray:
    """Original UTF-8 bytes per token of one document, from the tokens' end byte offsets in ``transformed``."""
    if not ends:
        return np.zeros(0, dtype=np.int64)
    raw = transformed.encode("utf-8")
    weights = caseops.original_byte_weights(raw) if use_caseops else np.ones(len(raw), dtype=np.int64)
    cum = np.concatenate([[0], np.cumsum(weights)])
    stops = np.maximum.accumulate(np.asarray(ends, dtype=np.int64))
    stops[-1] = len(raw)
    counts = np.diff(cum[np.concatenate([[0], stops])])
    if counts.sum() != len(original.encode("utf-8")):
        raise AssertionError("byte counts do not sum to the document's UTF-8 length: transform is not lossless")
    return counts


def _encode_batch(texts: list[str], with_bytes: bool) -> EncodedBatch:
    sp, use_caseops = _worker["sp"], _worker["caseops"]
    transformed = [caseops.encode(t) for t in texts] if use_caseops else texts
    bos = sp.bos_id()
    if not with_bytes:
        tokens = np.concatenate([np.asarray([bos, *ids], dtype=np.int64) for ids in sp.encode(transformed)])
        return EncodedBatch(tokens, None, len(texts), 0)
    tokens, counts, failures = [], [], 0
    for text, encoded in zip(texts, transformed, strict=True):
        pieces = sp.encode(encoded, out_type="proto").pieces
        ids = [p.id for p in pieces]
        bos_bytes = 0 if ids else len(text.encode("utf-8"))  # a document without tokens: its bytes on its BOS
        tokens.append(np.asarray([bos, *ids], dtype=np.int64))
        counts.append(
            np.concatenate([[bos_bytes], doc_byte_counts(text, encoded, [p.end for p in pieces], use_caseops)])
        )
        if _worker["check"]:
            decoded = sp.decode(ids)
            failures += (caseops.decode(decoded) if use_caseops else decoded) != text
    return EncodedBatch(np.concatenate(tokens), np.concatenate(counts), len(texts), failures)


def _batches(items: Iterable[docs.Doc], size: int) -> Iterator[list[str]]:
    it = iter(items)
    while batch := [d.text for d in itertools.islice(it, size)]:
        yield batch


def _ordered(pool: Pool, jobs: Iterator[list[str]], with_bytes: bool, window: int) -> Iterator[EncodedBatch]:
    """Results in job order with at most ``window`` batches in flight (``Pool.imap`` would read all input)."""
    pending: deque = deque()
    for job in jobs:
        pending.append(pool.apply_async(_encode_batch, (job, with_bytes)))
        if len(pending) >= window:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


def is_lossless(meta: dict) -> bool:
    """Whether the tokenizer's options make decode(encode(doc)) == doc."""
    options = meta.get("options", {})
    return (
        options.get("normalization") == "identity"
        and options.get("remove_extra_whitespaces") is False
        and options.get("byte_fallback") is True
    )


def encode_split(split: str, docs_dir: Path, tokenizer_dir: Path, out: Path, shard_tokens: int, workers: int) -> dict:
    """Encode one split of documents into shards (and, for val, the byte sidecar); return its summary."""
    meta = tok.read_meta(tokenizer_dir)
    with_bytes = split == "val"
    check = with_bytes and is_lossless(meta)
    writer = shards.ShardWriter(out, split, shard_tokens)
    sidecar = shards.ShardWriter(out, "val_bytes", shard_tokens)
    ndocs = nbytes = failures = 0
    init = (str(tokenizer_dir / tok.MODEL_FILE), bool(meta["caseops"]), check)
    jobs = _batches(docs.read_docs(docs_dir, split), BATCH_DOCS)
    with (
        multiprocessing.get_context("fork").Pool(workers, initializer=_init_worker, initargs=init) as pool,
        tqdm(desc=f"tokenize {split}", unit="tok", unit_scale=True, mininterval=1) as progress,
    ):
        for batch in _ordered(pool, jobs, with_bytes, window=4 * workers):
            writer.append(batch.tokens)
            if batch.byte_counts is not None:
                sidecar.append(batch.byte_counts)
                nbytes += int(batch.byte_counts.sum())
            ndocs += batch.docs
            failures += batch.roundtrip_failures
            progress.update(len(batch.tokens))
    summary = {"tokens": writer.total, "docs": ndocs, "shards": [p.name for p in writer.close() + sidecar.close()]}
    if with_bytes:
        summary["sidecar_bytes"] = nbytes
    if check:
        summary["roundtrip_failures"] = failures
    return summary
