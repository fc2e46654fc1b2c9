"""The submission container ``model.bin``: one file, self-describing, checked before anything is decoded.

Layout (all integers little-endian)::

    offset  size  field
    0       8     magic b"PGOLFMB\\0"
    8       2     format version (2)
    10      2     reserved (0)
    12      4     manifest length M
    16      8     payload length P
    24      32    sha256 of header bytes 0-23, then of the M + P bytes that follow the header
    56      M     manifest: brotli-compressed UTF-8 JSON (the streams' names, codecs and lengths, and whatever
                  the writer adds: model config, quantized-tensor layout)
    56+M    P     payload: the streams, concatenated in manifest order

Loading checks, in order: the magic (a foreign file), the version, the reserved bytes, the length (a truncated or
padded file), the hash (a flipped byte anywhere, the header's lengths included), then that the streams tile the
payload exactly. Version 1 hashed only the M + P bytes, so a shifted length went unseen. Each failure is a
:class:`ContainerError` naming the file and what to do. Loading never executes code. The manifest is compressed
because its bytes count toward the 16,000,000-byte limit like everything else in the file.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import brotli

from pgolf.errors import PgolfError

MODEL_BIN = "model.bin"  # the file name inside artifacts/submission/
MAGIC = b"PGOLFMB\0"
VERSION = 2
_PREFIX = struct.Struct("<8sHHIQ")  # magic, version, reserved, M, P: the header bytes the digest covers
HEADER_BYTES = _PREFIX.size + hashlib.sha256().digest_size
RESERVED_OFFSET = 10


class ContainerError(PgolfError):
    """A model.bin that is not ours, of another version, truncated, or corrupted."""


def pack(manifest: dict[str, Any], streams: list[tuple[str, bytes]]) -> bytes:
    """The container bytes of ``streams`` (name, data) with ``manifest`` (a JSON-able dict without 'streams')."""
    if "streams" in manifest:
        raise ValueError("the container writes the 'streams' manifest entry itself")
    names = [name for name, _ in streams]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate stream names in {names}")
    full = {**manifest, "streams": [{"name": name, "length": len(data)} for name, data in streams]}
    head = brotli.compress(json.dumps(full, separators=(",", ":")).encode("utf-8"), quality=11)
    payload = b"".join(data for _, data in streams)
    prefix = _PREFIX.pack(MAGIC, VERSION, 0, len(head), len(payload))
    digest = hashlib.sha256(prefix + head + payload).digest()
    return prefix + digest + head + payload


def unpack(blob: bytes, source: str = "model.bin") -> tuple[dict[str, Any], dict[str, bytes]]:
    """The manifest and the named streams of a container; raises ContainerError on anything unexpected."""
    if len(blob) < HEADER_BYTES:
        raise ContainerError(f"{source}: {len(blob)} bytes, shorter than the {HEADER_BYTES}-byte header; "
                             "the file is truncated or not a pgolf model (re-run `dvc repro compress`)")  # fmt: skip
    magic, version, reserved, m_len, p_len = _PREFIX.unpack_from(blob, 0)
    if magic != MAGIC:
        raise ContainerError(f"{source}: not a pgolf model container (magic {magic!r}, expected {MAGIC!r})")
    if version != VERSION:
        raise ContainerError(f"{source}: container version {version}, this pgolf reads version {VERSION}; "
                             "re-run `dvc repro compress`")  # fmt: skip
    if reserved != 0:
        at = f"{RESERVED_OFFSET}-{RESERVED_OFFSET + 1}"
        raise ContainerError(f"{source}: reserved header bytes at offset {at} are not zero ({reserved:#06x}); "
                             "the file is corrupted (re-run `dvc repro compress`)")  # fmt: skip
    expected = HEADER_BYTES + m_len + p_len
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "has trailing bytes"
        raise ContainerError(f"{source}: {what}: the header promises {expected} bytes, the file has {len(blob)}")
    body = memoryview(blob)[HEADER_BYTES:]
    hashed = hashlib.sha256(memoryview(blob)[: _PREFIX.size])
    hashed.update(body)
    if hashed.digest() != blob[_PREFIX.size : HEADER_BYTES]:
        raise ContainerError(f"{source}: sha256 mismatch, the file is corrupted (re-run `dvc repro compress` "
                             "or `dvc checkout artifacts/submission`)")  # fmt: skip
    try:
        manifest = json.loads(brotli.decompress(bytes(body[:m_len])).decode("utf-8"))
    except (brotli.error, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ContainerError(f"{source}: manifest cannot be decoded ({err})") from None
    streams, offset = {}, m_len
    for s in manifest.get("streams", []):
        streams[s["name"]] = bytes(body[offset : offset + s["length"]])
        offset += s["length"]
    if offset != len(body):
        raise ContainerError(f"{source}: the manifest's streams cover {offset - m_len} of {p_len} payload bytes")
    return manifest, streams


def write(path: Path, manifest: dict[str, Any], streams: list[tuple[str, bytes]]) -> int:
    """Write a container; returns its size in bytes."""
    blob = pack(manifest, streams)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(blob)
    return len(blob)


def read(path: Path) -> tuple[dict[str, Any], dict[str, bytes]]:
    """:func:`unpack` of the file at ``path``."""
    return unpack(Path(path).read_bytes(), str(path))
