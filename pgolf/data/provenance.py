"""Data provenance: no training document may also be a validation document.

Several record runs trained on shards that held 80% of the validation documents (Issue #2127),
and nothing in their logs showed it. Here the tokenize stage records a content hash of every validation document
(``val_hashes.txt`` next to the shards, summarised in the shards manifest under ``val_hashes``), and
:func:`check_training_documents` fails on the first training document whose hash is a validation document's.

The tokenize stage also runs the check once, over every training shard, and records its finding in the manifest
(``provenance``). The stages that read training shards then trust that finding for the files the manifest's
sha256 names (:func:`recorded_check`): a sha256 per shard file instead of a hash per document on every rank.

Documents are hashed as they sit in the shards, so the check works for every ``data.source``, including
``fineweb_cached``, whose published shards are adopted without their text. A document is the run of token ids from
one BOS up to (excluding) the next BOS or the end of the stream; it may continue from one shard into the next. Its
hash is ``blake2b(digest_size=16)`` of its token ids without the BOS, as uint16 little-endian bytes. One tokenizer
encodes equal text to equal ids, so with the tokenizer fixed this is equivalent to hashing the decoded text.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from pgolf.data import shards
from pgolf.data.docs import sha256_file
from pgolf.errors import PgolfError

ALGORITHM = "blake2b-128 of uint16 token ids"
DIGEST_SIZE = 16
VAL_HASHES_FILE = "val_hashes.txt"


class ProvenanceError(PgolfError):
    """Training data that holds a validation document (or shards the check cannot read as documents)."""


@dataclass(slots=True)
class _Document:
    """One document found in a list of shards, located where its BOS sits."""

    digest: bytes
    path: Path  # the shard holding its BOS
    index: int  # its index among the documents that start in that shard
    offset: int  # token offset of its BOS in that shard
    length: int  # token ids, BOS excluded
    spans: bool  # continues into the next shard(s)


def _hasher(ids: np.ndarray | None = None) -> hashlib.blake2b:
    """A blake2b-128 hasher, fed ``ids`` (contiguous uint16 little-endian) when given."""
    return hashlib.blake2b(b"" if ids is None else ids, digest_size=DIGEST_SIZE)


def _as_ids(tokens: np.ndarray) -> np.ndarray:
    """``tokens`` as contiguous uint16 little-endian ids (the bytes that are hashed)."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"a token stream must be 1-D, got shape {tokens.shape}")
    if tokens.dtype != np.dtype("<u2") and tokens.size and (tokens.min() < 0 or tokens.max() > shards.MAX_VALUE):
        raise ValueError(f"token ids must fit uint16, got range [{int(tokens.min())}, {int(tokens.max())}]")
    return np.ascontiguousarray(tokens, dtype="<u2")


def _bounds(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(BOS positions, end positions) of the documents that start in ``tokens``."""
    starts = np.flatnonzero(tokens == bos_id)
    return starts, np.append(starts[1:], tokens.size)[: starts.size]


def _shard_documents(paths: list[Path], bos_id: int, on_shard: Callable[[], object]) -> Iterator[_Document]:
    """Every document of ``paths`` read in order; the last one of a shard may continue into the next."""
    pending: tuple[hashlib.blake2b, _Document] | None = None  # the document the previous shard left open
    for path in paths:
        ids = _as_ids(shards.read_shard(path, mmap=True))
        starts, ends = _bounds(ids, bos_id)
        head = int(starts[0]) if starts.size else ids.size  # tokens continuing the open document
        if pending is None and head:
            raise ProvenanceError(
                f"{path}: opens with {head} tokens before its first BOS (id {bos_id}) and no earlier shard was "
                "given; check the shards from the split's first one, in order"
            )
        if pending is not None:
            hasher, doc = pending
            hasher.update(ids[:head])
            doc.length += head
            doc.spans = doc.spans or head > 0
            if starts.size:
                doc.digest, pending = hasher.digest(), None
                yield doc
        for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
            hasher = _hasher(ids[start + 1 : end])
            doc = _Document(b"", path, index, start, end - start - 1, spans=False)
            if end == ids.size:  # may go on in the next shard
                pending = hasher, doc
            else:
                doc.digest = hasher.digest()
                yield doc
        on_shard()
    if pending is not None:
        hasher, doc = pending
        doc.digest = hasher.digest()
        yield doc


def write_val_hashes(shard_dir: Path, bos_id: int) -> dict:
    """Write ``val_hashes.txt`` (one hex digest per validation document, in order); return its manifest entry."""
    shard_dir = Path(shard_dir)
    paths = shards.shard_paths(shard_dir, "val")
    if not paths:
        raise shards.ShardError(f"{shard_dir}: no val_*.bin shards to hash")
    out = shard_dir / VAL_HASHES_FILE
    count = 0
    with open(out, "w", encoding="ascii", newline="\n") as f:
        for doc in _shard_documents(paths, bos_id, on_shard=lambda: None):
            f.write(doc.digest.hex() + "\n")
            count += 1
    return {"algorithm": ALGORITHM, "documents": count, "file": VAL_HASHES_FILE, "sha256": sha256_file(out)}


def read_val_hashes(shard_dir: Path, recorded: str | None = None) -> dict[bytes, int]:
    """digest -> index of the first validation document with that digest, from ``val_hashes.txt``, after checking
    the file against ``recorded``, by default the sha256 the tokenize stage recorded for it in the shards' manifest
    (fail closed)."""
    path = Path(shard_dir) / VAL_HASHES_FILE
    if not path.is_file():
        raise PgolfError(
            f"{path}: validation document hashes missing (shards written before the provenance check?); "
            "re-run `dvc repro tokenize`"
        )
    if recorded is None:
        recorded = shards.read_manifest(shard_dir).get("val_hashes", {}).get("sha256")
    if recorded is None:
        raise PgolfError(f"{Path(shard_dir) / shards.MANIFEST_FILE}: records no sha256 of {VAL_HASHES_FILE}; "
                         f"{shards.REBUILD}")  # fmt: skip
    if sha256_file(path) != recorded:
        raise PgolfError(f"{path}: its content changed after the tokenize stage wrote it (sha256 differs from "
                         f"{shards.MANIFEST_FILE}); {shards.REBUILD}")  # fmt: skip
    hashes: dict[bytes, int] = {}
    with open(path, encoding="ascii", errors="replace") as f:
        for index, line in enumerate(f):
            text = line.rstrip("\n")
            try:
                digest = bytes.fromhex(text)
            except ValueError:
                digest = b""
            if len(digest) != DIGEST_SIZE or len(text) != 2 * DIGEST_SIZE:
                raise PgolfError(
                    f"{path}: line {index + 1} is not a {2 * DIGEST_SIZE}-digit hex digest ({text[:40]!r}); "
                    "the file is malformed, re-run `dvc repro tokenize`"
                )
            hashes.setdefault(digest, index)
    return hashes


def _overlap_error(doc: _Document, val_index: int, what: str) -> ProvenanceError:
    where = f"document {doc.index} of {doc.path} (token offset {doc.offset}, {doc.length} tokens"
    where += ", continuing into the next shard)" if doc.spans else ")"
    return ProvenanceError(
        f"{what}: {where} equals validation document {val_index} (line {val_index + 1} of {VAL_HASHES_FILE}, "
        f"same {ALGORITHM}). The training data must not contain validation documents (Issue #2127: "
        "shards holding validation documents made record scores invalid); rebuild the shards from disjoint "
        "train/val splits (`dvc repro tokenize`)"
    )


def check_disjoint(
    shard_paths: list[Path], val_hashes: dict[bytes, int], bos_id: int, *, what: str, progress: bool = False
) -> dict:
    """Hash every document of ``shard_paths``; raise :class:`ProvenanceError` on the first validation document.

    ``val_documents`` in the result counts distinct validation hashes (equal validation documents count once).
    """
    count = 0
    with tqdm(total=len(shard_paths), desc=what, unit="shard", disable=not progress) as bar:
        for doc in _shard_documents([Path(p) for p in shard_paths], bos_id, on_shard=bar.update):
            count += 1
            if (val_index := val_hashes.get(doc.digest)) is not None:
                raise _overlap_error(doc, val_index, what)
    return {"train_documents": count, "val_documents": len(val_hashes), "overlap": 0, "passed": True}


def check_training_documents(
    shard_dir: Path, shard_paths: list[Path], bos_id: int, *, what: str, progress: bool = False,
    recorded: str | None = None,
) -> dict:  # fmt: skip
    """:func:`check_disjoint` of ``shard_paths`` against the validation hashes recorded in ``shard_dir`` (checked
    against their file's sha256 ``recorded``, when given)."""
    return check_disjoint(shard_paths, read_val_hashes(shard_dir, recorded), bos_id, what=what, progress=progress)


def check_once(shard_dir: Path, bos_id: int, val_hashes: dict, *, progress: bool = False) -> dict:
    """The tokenize stage's check of every training shard of ``shard_dir`` against the hashes it just wrote
    (``val_hashes``: their manifest entry, :func:`write_val_hashes`), as the manifest's ``provenance`` entry: a
    finding (the first validation document met in training, or shards the check cannot read) is recorded, not
    raised, so the shards stay inspectable and every stage that reads them refuses them with the same message."""
    try:
        report = check_training_documents(shard_dir, shards.shard_paths(shard_dir, "train"), bos_id, what="tokenize",
                                          progress=progress, recorded=val_hashes["sha256"])  # fmt: skip
    except ProvenanceError as err:
        return {"algorithm": ALGORITHM, "passed": False, "finding": str(err).removeprefix("tokenize: ")}
    return {"algorithm": ALGORITHM, **report}


def recorded_check(shard_dir: Path, manifest: dict, *, what: str) -> dict:
    """The tokenize stage's finding for the training shards of ``shard_dir``, valid because every training shard
    still has the sha256 the manifest recorded (:func:`pgolf.data.shards.verify`); raises :class:`ProvenanceError`
    on a recorded finding and fails closed on a manifest without one. Returns the check's report with the seconds
    this verification took."""
    start = time.perf_counter()
    entry = manifest.get("provenance")
    if not isinstance(entry, dict) or not isinstance(entry.get("passed"), bool):
        raise PgolfError(f"{Path(shard_dir) / shards.MANIFEST_FILE}: records no check of the training documents "
                         f"against the validation documents; {shards.REBUILD}")  # fmt: skip
    if not entry["passed"]:
        raise ProvenanceError(f"{what}: {entry.get('finding', 'the tokenize stage found a validation document')}")
    shards.verify(shard_dir, manifest, ("train",))
    checked = len(shards.shard_paths(shard_dir, "train"))
    return {**entry, "verified": f"sha256 of {checked} train shards", "seconds": round(time.perf_counter() - start, 3)}
