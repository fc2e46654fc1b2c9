"""The challenge's token shard format: reader and writer side by side.

A shard is a 256-entry little-endian int32 header followed by ``n`` little-endian uint16 values::

    header[0] = 20240520   magic
    header[1] = 1          version
    header[2] = n          number of uint16 values
    header[3:] = 0

and the file is exactly ``1024 + 2 n`` bytes. Token shards hold token ids (one BOS before each document, no EOS);
validation byte sidecars (``val_bytes_*.bin``) hold, for each token of the matching ``val_*.bin``, how many
original UTF-8 bytes it accounts for. Shards are named ``{kind}_{index:06d}.bin`` and matched by an exact pattern,
so ``val_bytes_*`` never passes for ``val_*`` (the reference's glob collision).

The tokenize stage writes ``manifest.json`` beside the shards with the sha256 of every file it wrote. Every
reader that a score depends on checks the files against it (:func:`verify`), and a missing or unreadable manifest
is an error, never a skipped check: a changed token or byte count would otherwise give a wrong val_bpb with exit
code 0.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from pgolf.data.docs import sha256_file
from pgolf.errors import PgolfError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_VALUE = 2**16 - 1
MAX_ENTRIES = 2**31 - 1
KINDS = ("train", "val", "val_bytes")
MANIFEST_FILE = "manifest.json"
REBUILD = "restore it with `dvc checkout data/shards` or re-run `dvc repro tokenize`"


class ShardError(PgolfError, ValueError):
    """A shard file that is not a valid shard; the message names the file and the problem."""


def shard_name(kind: str, index: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown shard kind {kind!r}; expected one of {KINDS}")
    return f"{kind}_{index:06d}.bin"


def write_shard(path: Path | str, values: np.ndarray) -> None:
    """Write ``values`` (integers in [0, 65535]) as one shard, atomically (temp file + rename)."""
    path = Path(path)
    values = np.asarray(values)
    if values.ndim != 1:
        raise ValueError(f"{path}: shard values must be 1-D, got shape {values.shape}")
    if values.size > MAX_ENTRIES:
        raise ShardError(f"{path}: {values.size} entries exceed the format's limit of {MAX_ENTRIES}")
    if values.size and (int(values.min()) < 0 or int(values.max()) > MAX_VALUE):
        raise ShardError(
            f"{path}: values must fit uint16 (0..{MAX_VALUE}), got range "
            f"[{int(values.min())}, {int(values.max())}]; a vocabulary over 65,536 does not fit this format"
        )
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[0], header[1], header[2] = MAGIC, VERSION, values.size
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(values.astype("<u2", copy=False).tobytes())
    os.replace(tmp, path)


def read_header(path: Path | str) -> int:
    """Validate a shard's header and size; return its number of entries."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            raw = f.read(HEADER_BYTES)
    except OSError as err:
        raise ShardError(f"{path}: cannot read shard: {err.strerror}") from err
    if len(raw) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated header ({len(raw)} of {HEADER_BYTES} bytes); not a shard")
    header = np.frombuffer(raw, dtype="<i4")
    if header[0] != MAGIC:
        raise ShardError(f"{path}: bad magic {int(header[0])} (expected {MAGIC}); not a token shard")
    if header[1] != VERSION:
        raise ShardError(f"{path}: unsupported shard version {int(header[1])} (expected {VERSION})")
    count = int(header[2])
    if count < 0:
        raise ShardError(f"{path}: corrupt header, negative entry count {count}")
    if np.any(header[3:]):
        raise ShardError(f"{path}: corrupt header, reserved fields 3..255 are not zero")
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise ShardError(f"{path}: {what}: header says {count} entries = {expected} bytes, file has {size} bytes")
    return count


def read_shard(path: Path | str, *, vocab_size: int | None = None, mmap: bool = False) -> np.ndarray:
    """Read one shard as uint16 (memory-mapped when ``mmap``), checking header, size and, if given, vocab."""
    path = Path(path)
    count = read_header(path)
    if mmap:
        values = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    else:
        values = np.fromfile(path, dtype="<u2", count=count, offset=HEADER_BYTES)
        if values.size != count:
            raise ShardError(f"{path}: truncated while reading ({values.size} of {count} entries)")
    if vocab_size is not None and count and int(values.max()) >= vocab_size:
        raise ShardError(
            f"{path}: token id {int(values.max())} is out of range for vocab_size {vocab_size}; "
            "the shards and the tokenizer disagree: re-run `dvc repro tokenize`"
        )
    return values


def shard_paths(directory: Path | str, kind: str) -> list[Path]:
    """The shards of one kind in ``directory``, in index order; indices must run 0..n-1 without gaps."""
    directory = Path(directory)
    pattern = re.compile(rf"^{re.escape(kind)}_(\d{{6}})\.bin$")
    found = sorted((int(m.group(1)), p) for p in directory.iterdir() if (m := pattern.match(p.name)))
    for expected, (index, path) in enumerate(found):
        if index != expected:
            raise ShardError(f"{directory}: shard index gap: expected {shard_name(kind, expected)}, found {path.name}")
    return [p for _, p in found]


def read_manifest(directory: Path | str) -> dict:
    """The tokenize stage's ``manifest.json`` of a shard folder, with the sha256 of every shard it wrote; an error
    naming the file and the fix when it is missing, unreadable or without those hashes (fail closed)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise ShardError(f"{path}: missing, so the shards cannot be checked; {REBUILD}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ShardError(f"{path}: unreadable ({err}); {REBUILD}") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("sha256"), dict):
        raise ShardError(f"{path}: holds no sha256 of the shards (written by an older pgolf?); {REBUILD}")
    return manifest


def verify(directory: Path | str, manifest: dict, kinds: tuple[str, ...]) -> None:
    """Every shard of ``kinds`` that ``manifest`` lists is present with its recorded sha256, and no other shard of
    those kinds is there: an error naming the first file that differs."""
    directory, recorded = Path(directory), manifest["sha256"]
    for kind in kinds:
        present = {p.name: p for p in shard_paths(directory, kind)}
        pattern = re.compile(rf"^{re.escape(kind)}_\d{{6}}\.bin$")
        for name in sorted(n for n in recorded if pattern.match(n)):
            if name not in present:
                raise ShardError(f"{directory / name}: listed in {MANIFEST_FILE} but missing; {REBUILD}")
        for name, path in present.items():
            if name not in recorded:
                raise ShardError(f"{path}: not written by the tokenize stage (not in {MANIFEST_FILE}); remove it or "
                                 "re-run `dvc repro tokenize`")  # fmt: skip
            if sha256_file(path) != recorded[name]:
                raise ShardError(f"{path}: its content changed after the tokenize stage wrote it (sha256 differs "
                                 f"from {MANIFEST_FILE}); {REBUILD}")  # fmt: skip


def load_shards(directory: Path | str, kind: str, *, vocab_size: int | None = None) -> np.ndarray:
    """All shards of one kind concatenated (raises when there are none)."""
    paths = shard_paths(directory, kind)
    if not paths:
        raise ShardError(f"{directory}: no {kind}_*.bin shards")
    return np.concatenate([read_shard(p, vocab_size=vocab_size) for p in paths])


def load_val_with_bytes(directory: Path | str, *, vocab_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Validation tokens and their byte sidecar, checked to be aligned shard by shard."""
    tokens = shard_paths(directory, "val")
    sidecar = shard_paths(directory, "val_bytes")
    if len(tokens) != len(sidecar):
        raise ShardError(f"{directory}: {len(tokens)} val shards but {len(sidecar)} val_bytes shards (the byte "
                         f"sidecar); {REBUILD}")  # fmt: skip
    for tok_path, byte_path in zip(tokens, sidecar, strict=True):
        if read_header(tok_path) != read_header(byte_path):
            raise ShardError(f"{byte_path}: entry count differs from {tok_path.name}; sidecar is misaligned")
    return load_shards(directory, "val", vocab_size=vocab_size), load_shards(directory, "val_bytes")


class ShardWriter:
    """Streams values into ``{kind}_{k:06d}.bin`` files of exactly ``shard_size`` entries (the last may be shorter).

    Two writers fed arrays of equal lengths produce shards of equal sizes, which keeps a sidecar in lock-step
    with its token shards.
    """

    def __init__(self, directory: Path | str, kind: str, shard_size: int) -> None:
        if shard_size <= 0:
            raise ValueError(f"shard_size must be positive, got {shard_size}")
        self.directory = Path(directory)
        self.kind = kind
        self.shard_size = shard_size
        self.paths: list[Path] = []
        self.total = 0
        self._parts: list[np.ndarray] = []
        self._buffered = 0

    def append(self, values: np.ndarray) -> None:
        self._parts.append(np.asarray(values, dtype=np.int64))
        self._buffered += len(values)
        self.total += len(values)
        while self._buffered >= self.shard_size:
            self._flush(self.shard_size)

    def close(self) -> list[Path]:
        if self._buffered:
            self._flush(self._buffered)
        return self.paths

    def _flush(self, count: int) -> None:
        data = np.concatenate(self._parts)
        path = self.directory / shard_name(self.kind, len(self.paths))
        write_shard(path, data[:count])
        self.paths.append(path)
        rest = data[count:]
        self._parts = [rest] if rest.size else []
        self._buffered = rest.size
