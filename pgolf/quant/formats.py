"""Typed quantized formats, the one dequantizer every consumer shares, and the flat tensor dict + JSON manifest.

Formats:
    QuantizedMatrix   int8 Q with one fp16 scale per row (GPTQ/RTN), Ŵ = diag(s) Q; optionally in the Hadamard-rotated
                      input space, undone after any low-rank correction is added (Ŵ = (diag(s) Q + Â B̂) Q_H).
                      AWQ-lite (:class:`ProtectedGroups`) puts a few column groups on a finer grid with a second
                      per-row scale: those columns dequantize as diag(s_hi) Q instead.
    GateInt8Row       int8 per-row absmax quantization of the small attention-gate matrices.
    Passthrough       the tensor itself, stored as fp16 (or fp32), restored to its original dtype.
    LowRankCorrection LQER factors Â B̂ ("asym": int2 A with one scale, int4 B with per-group scales; "sym": per-row).

The flat dict uses keys `{name}.q`, `{name}.scale`, `{name}.value`, `{name}.awq_scale` (AWQ-lite's s_hi) and
`{name}.lqer.{a_q,a_scale,b_q,b_scale}`; everything else (kind, bits, shape, dtype, rotation, AWQ-lite group starts,
size and bits, LQER mode and group) is in the manifest, never in key names. A matrix without protected groups has
no ``awq`` manifest field at all, so its manifest is the one written before AWQ-lite existed.

References:
    parameter-golf record PR #1855 (`gptq_mixed_quantize`, `dequantize_mixed`), PR #2143 (Hadamard rotation),
    PR #1908 (AWQ-lite group promotion).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from pgolf import tensorio
from pgolf.files import read_json, write_json
from pgolf.quant.bits import MAX_BITS, MIN_BITS, check_bits
from pgolf.tensorio import torch_dtype

MANIFEST_VERSION = 1
QUANT_FILE, MANIFEST_FILE = "quantized.safetensors", "manifest.json"  # the quantize stage's to_tensors output
SCALE_FLOOR = 1e-10
FP16_TINY = 2.0**-24  # smallest positive fp16 (subnormal); scales that round to 0 are lifted to it


def to_fp16_scale(x: Tensor) -> Tensor:
    """fp16(max(x, 1e-10)), with values that underflow to 0 in fp16 lifted to the smallest fp16 subnormal."""
    s = x.float().clamp_min(SCALE_FLOOR).to(torch.float16)
    if not torch.isfinite(s).all():
        raise ValueError("a quantization scale overflows fp16 (|value| > 65504); the tensor is not finite or too large")
    return torch.where(s == 0, torch.tensor(FP16_TINY, dtype=torch.float16), s)


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValueError(msg)


def _check_rows(q: Tensor, scale: Tensor, what: str) -> None:
    _require(q.dtype == torch.int8 and q.ndim == 2, f"{what}: q must be 2-D int8, got {q.dtype} {tuple(q.shape)}")
    _require(
        scale.dtype == torch.float16 and tuple(scale.shape) == (q.shape[0],),
        f"{what}: scale must be fp16 of shape ({q.shape[0]},), got {scale.dtype} {tuple(scale.shape)}",
    )


@dataclass(frozen=True, eq=False)
class ProtectedGroups:
    """AWQ-lite: the column groups [start, start + size) of a QuantizedMatrix whose codes lie on the finer grid
    ±(2^(bits-1)-1) with the fp16 per-row step `scale` (s_hi), in the matrix's own (possibly rotated) columns."""

    starts: tuple[int, ...]
    size: int
    scale: Tensor
    bits: int

    def __post_init__(self) -> None:
        _require(self.size > 0 and len(self.starts) > 0, "ProtectedGroups: needs a positive size and a start")
        _require(list(self.starts) == sorted(set(self.starts)), f"ProtectedGroups: starts {self.starts} not sorted")
        gaps = [b - a for a, b in zip(self.starts, self.starts[1:], strict=False)]
        _require(self.starts[0] >= 0 and all(g >= self.size for g in gaps), "ProtectedGroups: groups overlap")
        check_bits(self.bits, "ProtectedGroups")
        _require(self.scale.dtype == torch.float16 and self.scale.ndim == 1, "ProtectedGroups: scale not fp16 rows")

    def columns(self, cols: int) -> Tensor:
        """The bool mask [cols] of the protected columns."""
        mask = torch.zeros(cols, dtype=torch.bool)
        for start in self.starts:
            mask[start : start + self.size] = True
        return mask


@dataclass(frozen=True, eq=False)
class QuantizedMatrix:
    """int8 Q [rows, cols] in [-(2^(bits-1)-1), 2^(bits-1)-1] with fp16 per-row scales; `rotated`: Q lives in the
    Hadamard-rotated input space; `protected`: AWQ-lite's finer-grid column groups (None: none)."""

    kind: ClassVar[str] = "matrix"
    q: Tensor
    scale: Tensor
    bits: int
    rotated: bool
    protected: ProtectedGroups | None = None

    def __post_init__(self) -> None:
        _check_rows(self.q, self.scale, "QuantizedMatrix")
        _require(MIN_BITS <= self.bits <= MAX_BITS,
                 f"QuantizedMatrix: bits must be in [{MIN_BITS}, {MAX_BITS}], got {self.bits}")  # fmt: skip
        p = self.protected
        if p is not None:
            _require(tuple(p.scale.shape) == (self.q.shape[0],), "QuantizedMatrix: protected scale is not per row")
            _require(p.starts[-1] + p.size <= self.q.shape[1], "QuantizedMatrix: a protected group passes the end")
            _require(p.bits > self.bits, f"QuantizedMatrix: protected bits {p.bits} not finer than {self.bits}")


@dataclass(frozen=True, eq=False)
class GateInt8Row:
    """int8 Q [rows, cols] in [-127, 127] with fp16 per-row absmax scales."""

    kind: ClassVar[str] = "gate_int8_row"
    q: Tensor
    scale: Tensor

    def __post_init__(self) -> None:
        _check_rows(self.q, self.scale, "GateInt8Row")


@dataclass(frozen=True, eq=False)
class Passthrough:
    """The tensor kept as is (fp16 or fp32); `dtype` names the original dtype restored at dequantization."""

    kind: ClassVar[str] = "passthrough"
    value: Tensor
    dtype: str

    def __post_init__(self) -> None:
        _require(self.value.dtype in (torch.float16, torch.float32), f"Passthrough: bad dtype {self.value.dtype}")
        torch_dtype(self.dtype)


@dataclass(frozen=True, eq=False)
class LowRankCorrection:
    """LQER factors Â [rows, r] and B̂ [r, cols], int8 containers.

    "asym": a_q in [-2, 1] with a 0-dim fp16 scale; b_q in [-8, 7] with one fp16 scale per `group` consecutive
    row-major values. "sym": fp16 a_scale per row of A and b_scale per row of B; group is 0.
    """

    a_q: Tensor
    a_scale: Tensor
    b_q: Tensor
    b_scale: Tensor
    mode: Literal["asym", "sym"]
    group: int

    def __post_init__(self) -> None:
        _require(self.a_q.dtype == torch.int8 and self.b_q.dtype == torch.int8, "LowRankCorrection: factors not int8")
        _require(self.a_q.shape[1] == self.b_q.shape[0], "LowRankCorrection: A and B ranks differ")
        if self.mode == "asym":
            _require(self.group > 0 and self.b_q.numel() == self.group * self.b_scale.numel(), "asym: bad B groups")
        elif self.mode == "sym":
            _require(self.group == 0, f"sym LowRankCorrection has no groups, got group={self.group}")
        else:
            raise ValueError(f"unknown LowRankCorrection mode {self.mode!r}; expected 'asym' or 'sym'")


QuantizedTensor = QuantizedMatrix | GateInt8Row | Passthrough
FORMAT_KINDS: dict[str, type[QuantizedMatrix] | type[GateInt8Row] | type[Passthrough]] = {
    cls.kind: cls for cls in (QuantizedMatrix, GateInt8Row, Passthrough)
}


@dataclass(frozen=True, eq=False)
class Entry:
    """One named tensor of the state dict in its quantized format, with an optional LQER correction."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    fmt: QuantizedTensor
    lqer: LowRankCorrection | None

    def __post_init__(self) -> None:
        torch_dtype(self.dtype)
        if self.lqer is not None:
            _require(isinstance(self.fmt, QuantizedMatrix), f"{self.name}: LQER applies only to a QuantizedMatrix")


def lowrank_dense(c: LowRankCorrection) -> Tensor:
    """Â B̂ in fp32."""
    a_q, b_q = c.a_q.float(), c.b_q.float()
    if c.mode == "asym":
        a = a_q * c.a_scale.float()
        b = (b_q.reshape(-1, c.group) * c.b_scale.float()[:, None]).reshape(b_q.shape)
    else:
        a = a_q * c.a_scale.float()[:, None]
        b = b_q * c.b_scale.float()[:, None]
    return a @ b


def matrix_dense(fmt: QuantizedMatrix) -> Tensor:
    """diag(s) Q in fp32 (in the matrix's own domain, no correction), with diag(s_hi) Q on the protected columns."""
    w = fmt.q.float() * fmt.scale.float()[:, None]
    p = fmt.protected
    if p is not None:
        cols = p.columns(fmt.q.shape[1])
        w[:, cols] = fmt.q[:, cols].float() * p.scale.float()[:, None]
    return w


def dequantize(entry: Entry) -> Tensor:
    """The dense tensor of an entry, computed in fp32 and cast to the entry's dtype and shape."""
    fmt = entry.fmt
    match fmt:
        case QuantizedMatrix():
            w = matrix_dense(fmt)
            if entry.lqer is not None:
                w = w + lowrank_dense(entry.lqer)
            if fmt.rotated:
                from pgolf.quant.hadamard import unrotate_weight  # only quantize.hadamard rotates

                w = unrotate_weight(w)
        case GateInt8Row():
            w = fmt.q.float() * fmt.scale.float()[:, None]
        case Passthrough():
            w = fmt.value.float()
        case _:
            raise TypeError(f"{entry.name}: unknown quantized format {type(fmt).__name__}")
    return w.reshape(entry.shape).to(torch_dtype(entry.dtype))


def dequantized_state(entries: Iterable[Entry]) -> dict[str, Tensor]:
    """The dense state dict of quantized entries."""
    return {e.name: dequantize(e) for e in entries}


def _format_tensors(fmt: QuantizedTensor) -> dict[str, Tensor]:
    if isinstance(fmt, Passthrough):
        return {"value": fmt.value}
    if isinstance(fmt, QuantizedMatrix) and fmt.protected is not None:
        return {"q": fmt.q, "scale": fmt.scale, "awq_scale": fmt.protected.scale}
    return {"q": fmt.q, "scale": fmt.scale}


def _format_meta(fmt: QuantizedTensor) -> dict[str, Any]:
    meta: dict[str, Any] = {"kind": fmt.kind}
    if isinstance(fmt, QuantizedMatrix):
        meta.update(bits=fmt.bits, rotated=fmt.rotated)
        if (p := fmt.protected) is not None:  # absent, not null, when off: the manifest stays byte-identical
            meta["awq"] = {"starts": list(p.starts), "size": p.size, "bits": p.bits}
    return meta


_LQER_FIELDS = ("a_q", "a_scale", "b_q", "b_scale")


def to_tensors(entries: Iterable[Entry]) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A flat safetensors-friendly dict of fresh contiguous tensors and a JSON-able manifest (entries in order)."""
    tensors: dict[str, Tensor] = {}
    records: list[dict[str, Any]] = []
    names: set[str] = set()
    for e in entries:
        _require(e.name not in names, f"duplicate entry name {e.name!r}")
        names.add(e.name)
        parts = {f"{e.name}.{k}": t for k, t in _format_tensors(e.fmt).items()}
        record: dict[str, Any] = {
            "name": e.name,
            "shape": list(e.shape),
            "dtype": e.dtype,
            "format": _format_meta(e.fmt),
        }
        record["lqer"] = None
        if e.lqer is not None:
            parts.update({f"{e.name}.lqer.{k}": getattr(e.lqer, k) for k in _LQER_FIELDS})
            record["lqer"] = {"mode": e.lqer.mode, "group": e.lqer.group}
        for key, t in parts.items():
            _require(key not in tensors, f"tensor key collision on {key!r}")
            tensors[key] = t.contiguous().clone()  # no aliasing: safetensors refuses shared storage
        records.append(record)
    return tensors, {"version": MANIFEST_VERSION, "entries": records}


def _format_from(name: str, meta: dict[str, Any], tensors: dict[str, Tensor], dtype: str) -> QuantizedTensor:
    kind = meta.get("kind")
    if kind not in FORMAT_KINDS:
        raise ValueError(f"{name}: unknown quantized format kind {kind!r} in manifest; known: {sorted(FORMAT_KINDS)}")
    if kind == Passthrough.kind:
        return Passthrough(value=tensors[f"{name}.value"], dtype=dtype)
    q, scale = tensors[f"{name}.q"], tensors[f"{name}.scale"]
    if kind == GateInt8Row.kind:
        return GateInt8Row(q=q, scale=scale)
    protected = None
    if (awq := meta.get("awq")) is not None:
        protected = ProtectedGroups(starts=tuple(int(x) for x in awq["starts"]), size=int(awq["size"]),
                                    scale=tensors[f"{name}.awq_scale"], bits=int(awq["bits"]))  # fmt: skip
    return QuantizedMatrix(q=q, scale=scale, bits=int(meta["bits"]), rotated=bool(meta["rotated"]), protected=protected)


def from_tensors(tensors: dict[str, Tensor], manifest: dict[str, Any]) -> list[Entry]:
    """The entries written by to_tensors, in order."""
    if manifest.get("version") != MANIFEST_VERSION:
        raise ValueError(f"quant manifest version {manifest.get('version')!r} != supported {MANIFEST_VERSION}")
    entries = []
    for r in manifest["entries"]:
        name = r["name"]
        try:
            fmt = _format_from(name, r["format"], tensors, r["dtype"])
            lqer = None
            if r["lqer"] is not None:
                parts = {k: tensors[f"{name}.lqer.{k}"] for k in _LQER_FIELDS}
                lqer = LowRankCorrection(**parts, mode=r["lqer"]["mode"], group=int(r["lqer"]["group"]))
        except KeyError as err:
            raise ValueError(f"{name}: tensor or manifest field {err} missing from the quantized state") from err
        entries.append(Entry(name=name, shape=tuple(r["shape"]), dtype=r["dtype"], fmt=fmt, lqer=lqer))
    return entries


def save_quantized(directory: Path, entries: list[Entry], meta: dict[str, Any]) -> None:
    """The quantize stage's output: the flat tensors and ``manifest.json`` = ``{"formats": ..., **meta}``."""
    tensors, manifest = to_tensors(entries)
    tensorio.save_tensors(Path(directory) / QUANT_FILE, tensors, {})
    write_json(Path(directory) / MANIFEST_FILE, {"formats": manifest, **meta})


def load_quantized(directory: Path) -> tuple[list[Entry], dict[str, Any]]:
    """The entries written by :func:`save_quantized`, and its whole manifest."""
    tensors, _ = tensorio.load_tensors(Path(directory) / QUANT_FILE)
    meta = read_json(Path(directory) / MANIFEST_FILE, "quantize")
    return from_tensors(tensors, meta["formats"]), meta
