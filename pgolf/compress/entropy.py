"""An explicit entropy coder for the integer groups, on ``constriction``'s range coder.

The record sends its GPTQ integers through lrzip's ZPAQ back end (~100 s for 36 M symbols, ~0.1% above the
zeroth-order entropy on i.i.d. symbols; brotli-11 ~1.1% above). GPTQ symbols are close to i.i.d. given their row
scale, so a coder that *knows* the symbol distribution reaches the bound directly: we store each group's symbol
histogram in the stream and range-code the symbols against it, in well under a second per group.

Contexts (``ans.context``):

* ``none``       one histogram per group: the zeroth-order bound of the group, plus a few hundred bytes of counts.
* ``row_class``  rows are put into ``classes`` classes by their mean |q| (quantiles, computed by the encoder), one
                 histogram per class; the class of every row is stored (one byte per row). Rows with different
                 effective widths (row-max RTN scales, rows hit by clipping) get their own distribution, which can go
                 below the group's zeroth-order bound; with SDClip scales every row has nearly the same shape, and
                 the extra side information usually costs more than it saves (measured in bench/compress.py).

Stream layout: ``u8 version, u8 context, u8 classes, i8 lowest symbol, u8 alphabet size``, the counts
(``classes x alphabet`` LEB128 varints), the row classes (``context=row_class`` only, u8 each), then the range
coder's 32-bit words (little-endian). The decoder gets the tensor shapes from the container's manifest.

Reference: constriction (Bamler, 2022), https://bamler-lab.github.io/constriction/
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from types import ModuleType

import numpy as np

from pgolf.compress.codecs import AnsConfig, CodecError, optional_module

VERSION = 1
CONTEXTS = ("none", "row_class")
_HEADER = struct.Struct("<BBBbB")


def _constriction() -> ModuleType:
    """The range coder's library, imported on first use: decoding a model.bin of another codec does not need it."""
    return optional_module("constriction", "constriction", "the ans codec")


def _varints(values: np.ndarray) -> bytes:
    out = bytearray()
    for v in values.tolist():
        while True:
            byte, v = v & 0x7F, v >> 7
            out.append(byte | (0x80 if v else 0))
            if not v:
                break
    return bytes(out)


def _read_varints(data: memoryview, count: int, pos: int) -> tuple[np.ndarray, int]:
    values = np.zeros(count, dtype=np.int64)
    for i in range(count):
        shift = value = 0
        while True:
            if pos >= len(data):
                raise CodecError("ans stream is truncated inside its symbol counts")
            byte = data[pos]
            pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        values[i] = value
    return values, pos


def _rows(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], np.ndarray]:
    """Every row of every 2-D array (1-D arrays are one row) and the rows' lengths."""
    rows = [
        r
        for a in arrays
        for r in (a.reshape(1, -1) if a.ndim <= 1 else a.reshape(a.shape[0], a[0].size if len(a) else 0))
    ]
    return rows, np.array([r.size for r in rows], dtype=np.int64)


def _row_classes(rows: list[np.ndarray], classes: int) -> np.ndarray:
    """Class of each row: the quantile bin of its mean |q| (``classes`` bins)."""
    if classes == 1 or not rows:
        return np.zeros(len(rows), dtype=np.uint8)
    width = np.array([np.abs(r.astype(np.float64)).mean() if r.size else 0.0 for r in rows])
    edges = np.quantile(width, np.linspace(0, 1, classes + 1)[1:-1])
    return np.searchsorted(edges, width, side="right").astype(np.uint8)


def encode(arrays: Sequence[np.ndarray], cfg: AnsConfig) -> bytes:
    """The range-coded stream of the integer ``arrays`` (int8 or any integers in [-128, 127])."""
    rows, _ = _rows(arrays)
    flat = np.concatenate([r.reshape(-1) for r in rows]) if rows else np.zeros(0, dtype=np.int8)
    lo = int(flat.min()) if flat.size else 0
    alphabet = int(flat.max()) - lo + 1 if flat.size else 1
    if lo < -128 or alphabet > 256:
        raise CodecError(f"ans coder takes int8 symbols; got values in [{lo}, {lo + alphabet - 1}]")
    classes = cfg.classes if cfg.context == "row_class" else 1
    row_class = _row_classes(rows, classes)
    counts = np.zeros((classes, alphabet), dtype=np.int64)
    for k in range(classes):
        members = [rows[i] for i in np.flatnonzero(row_class == k)]
        if members:
            counts[k] = np.bincount(np.concatenate(members).astype(np.int64) - lo, minlength=alphabet)
    constriction = _constriction()
    coder = constriction.stream.queue.RangeEncoder()
    for k in range(classes):
        members = [rows[i] for i in np.flatnonzero(row_class == k)]
        if counts[k].sum() and alphabet > 1:  # one symbol: known from the header, nothing to code
            model = constriction.stream.model.Categorical(counts[k] / counts[k].sum(), perfect=False)
            coder.encode(np.concatenate(members).astype(np.int32) - lo, model)
    side = row_class.tobytes() if cfg.context == "row_class" else b""
    header = _HEADER.pack(VERSION, CONTEXTS.index(cfg.context), classes, lo, alphabet - 1)
    words = coder.get_compressed().astype("<u4").tobytes()
    return header + _varints(counts.reshape(-1)) + side + words


def decode(data: bytes, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The int8 arrays of the given shapes from an :func:`encode` stream."""
    view = memoryview(data)
    if len(view) < _HEADER.size:
        raise CodecError("ans stream is shorter than its header")
    version, context, classes, lo, alpha_m1 = _HEADER.unpack_from(view, 0)
    if version != VERSION or context >= len(CONTEXTS) or classes == 0:
        raise CodecError(f"not an ans stream of version {VERSION} (version {version}, context {context})")
    alphabet = alpha_m1 + 1
    counts, pos = _read_varints(view, classes * alphabet, _HEADER.size)
    counts = counts.reshape(classes, alphabet)
    row_len = _row_lengths(shapes)
    if CONTEXTS[context] == "row_class":
        row_class = np.frombuffer(view[pos : pos + row_len.size], dtype=np.uint8)
        pos += row_len.size
        if row_class.size != row_len.size:
            raise CodecError("ans stream is truncated inside its row classes")
    else:
        row_class = np.zeros(row_len.size, dtype=np.uint8)
    if (len(view) - pos) % 4:
        raise CodecError("ans stream is truncated (coder words are not whole 32-bit words)")
    constriction = _constriction()
    coder = constriction.stream.queue.RangeDecoder(np.frombuffer(view[pos:], dtype="<u4").astype(np.uint32))
    values = np.zeros(int(row_len.sum()), dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(row_len)])
    for k in range(classes):
        idx = np.flatnonzero(row_class == k)
        n = int(row_len[idx].sum())
        if n == 0:
            continue
        if counts[k].sum() == 0:
            raise CodecError(f"ans stream: row class {k} has rows but no symbol counts")
        if alphabet == 1:
            decoded = np.full(n, lo, dtype=np.int64)
        else:
            model = constriction.stream.model.Categorical(counts[k] / counts[k].sum(), perfect=False)
            decoded = np.asarray(coder.decode(model, n), dtype=np.int64) + lo
        positions = np.concatenate([np.arange(starts[i], starts[i + 1]) for i in idx])
        values[positions] = decoded
    if counts.sum() != values.size:
        raise CodecError(f"ans stream counts {int(counts.sum())} symbols, the manifest's shapes {values.size}")
    out, offset = [], 0
    for s in shapes:
        n = int(np.prod(s))
        out.append(values[offset : offset + n].astype(np.int8).reshape(s))
        offset += n
    return out


def _row_lengths(shapes: Sequence[tuple[int, ...]]) -> np.ndarray:
    """Row lengths as :func:`_rows` cuts arrays of these shapes (a 0-D or 1-D array is one row)."""
    lengths: list[int] = []
    for s in shapes:
        if len(s) <= 1:
            lengths.append(int(np.prod(s)))
        else:
            lengths.extend([int(np.prod(s[1:]))] * int(s[0]))
    return np.array(lengths, dtype=np.int64)
