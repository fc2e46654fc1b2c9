"""Byte codecs behind one interface: ``compress(bytes) -> bytes`` and its exact inverse ``decompress``.

* ``raw``     no compression (a baseline and a debugging aid).
* ``brotli``  quality and window (the record: quality 11 everywhere, lgwin 24 for its remainder stream).
* ``lzma``    the stdlib .xz container at a preset (the record's alternative: preset 9).
* ``zstd``    the ``zstandard`` library at a level (22 = ultra); single-threaded, so the bytes are reproducible.
              The library is imported on first use (:func:`optional_module`).
* ``lrzip``   the Debian ``lrzip`` CLI (the record's per-group coder: ``-z`` ZPAQ context mixing, ``-L 9``). Its output
              depends on the thread count, which defaults to the number of CPUs, so we always pass ``-p`` (the
              record does not; -p1 and -p16 give different bytes) and set ``LRZIP=NOCONFIG``
              so that no ``/etc/lrzip.conf`` can change the settings.
* ``ans``     :mod:`pgolf.compress.entropy`: an explicit range-ANS coder for the integer groups (not a byte codec;
              built by :func:`make_codec` only for integer streams).

``shuffle`` is a transform, not a codec: it splits a byte string into ``stride`` interleaved planes (bytes 0, s, 2s,
then 1, 1+s, ...), the #1851 lineage's ``BSHF`` trick that puts the exponent bytes of fp16 values together.
"""

from __future__ import annotations

import importlib
import lzma
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Literal, Protocol

import brotli
import numpy as np
from pydantic import Field

from pgolf import lifeline
from pgolf.config import Section
from pgolf.dist import subprocess_env
from pgolf.errors import PgolfError


class CodecError(PgolfError):
    """A codec that cannot run (missing binary or package) or a stream it cannot decode."""


def optional_module(module: str, package: str, needed_by: str) -> ModuleType:
    """``import module``, or a CodecError that names the pip package to install.

    The optional coders (zstandard, constriction) are imported where they are used, so that decoding a model.bin
    of the default codecs (lrzip, brotli) needs neither: the GPU box that evaluates has neither.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise CodecError(f"the {package} package is not installed (needed by {needed_by}): install it with "
                         f"`pip install {package}`") from None  # fmt: skip


class BrotliConfig(Section):
    quality: int = Field(ge=0, le=11)
    lgwin: int = Field(ge=10, le=24)


class LzmaConfig(Section):
    preset: int = Field(ge=0, le=9)
    extreme: bool


class ZstdConfig(Section):
    level: int = Field(ge=1, le=22)


class LrzipConfig(Section):
    level: int = Field(ge=1, le=9)
    threads: int = Field(ge=1, description="pinned -p: the output bytes depend on it")
    zpaq: bool = Field(description="-z: ZPAQ context mixing (the record); false: the default LZMA back end")


class Codec(Protocol):
    name: str

    def compress(self, data: bytes) -> bytes: ...

    def decompress(self, data: bytes) -> bytes: ...


@dataclass(frozen=True)
class Raw:
    cfg: None = None
    name: str = "raw"

    def compress(self, data: bytes) -> bytes:
        return bytes(data)

    def decompress(self, data: bytes) -> bytes:
        return bytes(data)


@dataclass(frozen=True)
class Brotli:
    cfg: BrotliConfig
    name: str = "brotli"

    def compress(self, data: bytes) -> bytes:
        return brotli.compress(bytes(data), quality=self.cfg.quality, lgwin=self.cfg.lgwin)

    def decompress(self, data: bytes) -> bytes:
        try:
            return brotli.decompress(data)
        except brotli.error as err:
            raise CodecError(f"brotli stream is corrupt: {err}") from None


@dataclass(frozen=True)
class Lzma:
    cfg: LzmaConfig
    name: str = "lzma"

    def compress(self, data: bytes) -> bytes:
        return lzma.compress(bytes(data), preset=self.cfg.preset | (lzma.PRESET_EXTREME if self.cfg.extreme else 0))

    def decompress(self, data: bytes) -> bytes:
        try:
            return lzma.decompress(data)
        except lzma.LZMAError as err:
            raise CodecError(f"lzma stream is corrupt: {err}") from None


@dataclass(frozen=True)
class Zstd:
    cfg: ZstdConfig
    name: str = "zstd"

    def compress(self, data: bytes) -> bytes:
        return _zstandard().ZstdCompressor(level=self.cfg.level, threads=0).compress(bytes(data))

    def decompress(self, data: bytes) -> bytes:
        zstandard = _zstandard()
        try:
            return zstandard.ZstdDecompressor().decompress(data)
        except zstandard.ZstdError as err:
            raise CodecError(f"zstd stream is corrupt: {err}") from None


def _zstandard() -> ModuleType:
    return optional_module("zstandard", "zstandard", "the zstd codec")


def lrzip_binary() -> str:
    """The path of the ``lrzip`` executable, or a CodecError saying how to install it."""
    path = shutil.which("lrzip")
    if path is None:
        raise CodecError(
            "the lrzip binary is not installed (needed by compress.codec=lrzip): install it with "
            "`sudo apt-get install lrzip` (Debian/Ubuntu) or `make system`, or choose another codec, "
            "e.g. `dvc exp run -S compress.codec=ans`"
        )
    return path


@dataclass(frozen=True)
class Lrzip:
    cfg: LrzipConfig
    name: str = "lrzip"

    def _run(self, args: list[str], data: bytes, what: str) -> bytes:
        binary = lrzip_binary()
        with tempfile.TemporaryDirectory(prefix="pgolf_lrzip_") as tmp:
            src, dst = Path(tmp) / "in", Path(tmp) / "out"
            src.write_bytes(data)
            cmd = lifeline.guarded([binary, *args, "-q", "-f", "-o", str(dst), str(src)])  # dies with this process
            proc = subprocess.run(cmd, capture_output=True, env=subprocess_env(LRZIP="NOCONFIG"), check=False)
            if proc.returncode != 0 or not dst.is_file():
                err = proc.stderr.decode(errors="replace").strip()
                raise CodecError(f"lrzip {what} failed (exit {proc.returncode}): {err}")
            return dst.read_bytes()

    def compress(self, data: bytes) -> bytes:
        mode = ["-z"] if self.cfg.zpaq else []
        return self._run([*mode, "-L", str(self.cfg.level), "-p", str(self.cfg.threads)], data, "compression")

    def decompress(self, data: bytes) -> bytes:
        return self._run(["-d", "-p", str(self.cfg.threads)], data, "decompression")


def shuffle(data: bytes, stride: int) -> bytes:
    """Byte planes: all bytes at offsets ``0 mod stride``, then ``1 mod stride``, ...; stride <= 1 is the identity.

    A tail shorter than the stride stays in place at the end, so any length round-trips.
    """
    if stride <= 1:
        return bytes(data)
    n = len(data) // stride * stride
    body = np.frombuffer(data, dtype=np.uint8, count=n).reshape(-1, stride)
    return body.T.tobytes() + bytes(data[n:])


def unshuffle(data: bytes, stride: int) -> bytes:
    """The inverse of :func:`shuffle`."""
    if stride <= 1:
        return bytes(data)
    n = len(data) // stride * stride
    planes = np.frombuffer(data, dtype=np.uint8, count=n).reshape(stride, -1)
    return planes.T.tobytes() + bytes(data[n:])


CODECS: dict[str, type] = {"raw": Raw, "brotli": Brotli, "lzma": Lzma, "zstd": Zstd, "lrzip": Lrzip}
"""Every byte codec by name: the one list (a codec with settings takes its ``compress.<name>`` section)."""
CodecName = Literal[tuple(CODECS)]  # type: ignore[valid-type]


class AnsConfig(Section):
    """``compress.ans``: the range coder of :mod:`pgolf.compress.entropy` (its config lives here, with the
    others, so that the coder is imported only when ``compress.codec: ans``)."""

    context: Literal["none", "row_class"]
    classes: int = Field(ge=1, le=255, description="row classes of context=row_class")


def order0_entropy_bits(symbols: np.ndarray) -> float:
    """The zeroth-order (empirical i.i.d.) entropy of ``symbols`` in bits: n * H(p_hat)."""
    flat = np.asarray(symbols).reshape(-1)
    if flat.size == 0:
        return 0.0
    _, counts = np.unique(flat, return_counts=True)
    p = counts / flat.size
    return float(-(counts * np.log2(p)).sum())


class CodecsConfig(Section):
    """The settings of every byte codec (only the chosen ones are used)."""

    brotli: BrotliConfig
    lzma: LzmaConfig
    zstd: ZstdConfig
    lrzip: LrzipConfig


def make_codec(name: str, cfg: CodecsConfig) -> Codec:
    """The byte codec called ``name`` with its settings from ``cfg`` (its section of the same name)."""
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; known: {', '.join(CODECS)}")
    return CODECS[name](getattr(cfg, name, None))
