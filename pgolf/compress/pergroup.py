"""The per-group serializer (the record's ``pergroup``): quantized entries <-> named byte streams.

* **Integer groups.** The int8 matrices of the GPTQ/RTN tensors are grouped by role across layers: the group key is
  the tensor name without its ``blocks.{i}.`` prefix (``attn.q.weight``, ``mlp.up.weight``, ``tok_emb.weight``), so
  one stream holds e.g. every layer's query matrix. ``grouping: single`` puts all of them in one stream instead.
  The rows of the groups listed in ``simsort`` are reordered by :func:`pgolf.compress.simsort.similarity_order`
  (the permutation is stored; not for ``ans``, whose cost does not depend on the row order); with ``transpose`` a
  byte codec sees each matrix column by column, so the stream runs down an input column across (now similar) rows.
  The group goes through ``codec``: a byte codec, or ``ans``, the explicit entropy coder, which takes the rows.
* **The rest** (fp16 scales, LQER factors, int8 gates, passthrough tensors): their raw little-endian bytes, widest
  element first so that a byte shuffle of stride 2 lines up the fp16 values, shuffled by ``rest_shuffle`` and
  compressed with ``rest_codec``. No torch.save blob: every key, dtype and shape is in the layout.
* **Permutations**: uint16 (uint32 for more than 65,536 rows), little-endian, through ``rest_codec``.

The groups and the rest stream are independent, so they are coded, and decoded, one per worker thread
(:mod:`pgolf.compress.parallel`; the sort of a group runs in its worker). The streams come back in the serial order
and every codec is deterministic, so the bytes of model.bin do not depend on the number of workers.

The layout (a JSON-able dict stored in the container's manifest) names every stream and tensor, so decoding does
not assume a layer count or a tensor order (the record's decoder assumed exactly L tensors per group).

Reference: the record's ``_serialize_pergroup`` / ``_deserialize_pergroup`` (PR #1855).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from pgolf.compress import parallel
from pgolf.compress.codecs import (
    AnsConfig,
    CodecError,
    CodecName,
    CodecsConfig,
    make_codec,
    order0_entropy_bits,
    shuffle,
    unshuffle,
)
from pgolf.compress.simsort import inverse, similarity_order, torch_threads
from pgolf.quant import formats
from pgolf.tensorio import dtype_name, torch_dtype

LAYER_PREFIX = re.compile(r"^blocks\.\d+\.")
NUMPY_DTYPES = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<u2", torch.int8: "i1"}


class CompressConfig(CodecsConfig):
    """params.yaml ``compress``: how the quantized model becomes streams."""

    codec: Literal["ans", CodecName] = Field(description="integer groups' coder: ans or a byte codec")
    rest_codec: CodecName = Field(description="scales, LQER factors, gates, passthrough tensors, permutations")
    grouping: Literal["role", "single"]
    simsort: list[str] = Field(description="group keys whose rows are reordered (role grouping only)")
    transpose: bool = Field(description="byte codecs see matrices column by column")
    rest_shuffle: int = Field(ge=0, le=8, description="byte-shuffle stride of the rest stream (0: none)")
    ans: AnsConfig


@dataclass
class Stream:
    """One compressed stream and what the metrics report about it."""

    name: str
    codec: str
    data: bytes
    raw_bytes: int
    entropy_bits: float | None  # zeroth-order bound of the integer symbols (integer groups only)
    seconds: float


def group_key(name: str, grouping: str) -> str:
    """The integer group of tensor ``name``: its name without ``blocks.{i}.`` (role), or ``all`` (single)."""
    return "all" if grouping == "single" else LAYER_PREFIX.sub("", name)


def _int_matrices(entries: list[formats.Entry]) -> dict[str, formats.QuantizedMatrix]:
    return {e.name: e.fmt for e in entries if isinstance(e.fmt, formats.QuantizedMatrix)}


def _rest_tensors(entries: list[formats.Entry]) -> dict[str, torch.Tensor]:
    """Every tensor of the flat quantized state except the integer matrices, widest element first."""
    tensors, _ = formats.to_tensors(entries)
    ints = {f"{name}.q" for name in _int_matrices(entries)}
    rest = {k: t for k, t in tensors.items() if k not in ints}
    return dict(sorted(rest.items(), key=lambda kv: -kv[1].element_size()))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    if t.dtype not in NUMPY_DTYPES:
        raise CodecError(f"cannot serialize dtype {t.dtype}; supported: {sorted(dtype_name(d) for d in NUMPY_DTYPES)}")
    return t.contiguous().view(torch.uint8).numpy().tobytes() if t.dtype == torch.bfloat16 else (
        t.contiguous().numpy().astype(NUMPY_DTYPES[t.dtype]).tobytes())  # fmt: skip


def _tensor_from(buf: bytes, dtype: str, shape: list[int]) -> torch.Tensor:
    arr = np.frombuffer(buf, dtype=NUMPY_DTYPES[torch_dtype(dtype)]).copy()
    t = torch.from_numpy(arr)
    return (t.view(torch.bfloat16) if dtype == "bfloat16" else t).reshape(shape)


def _timed(name: str, codec: str, raw: int, bits: float | None, fn) -> Stream:
    start = time.perf_counter()
    data = fn()
    return Stream(name, codec, data, raw, bits, time.perf_counter() - start)


def _encode_group(name: str, mats: list[formats.QuantizedMatrix], sort: bool, cfg: CompressConfig
                  ) -> tuple[Stream, list[np.ndarray]]:  # fmt: skip
    """One integer group's stream, its rows first put in similarity order when ``sort``, and those orders."""
    arrays, perms = [], []
    for m in mats:
        q = m.q
        if sort:
            order = similarity_order(q)
            perms.append(order)
            q = q[torch.from_numpy(order)]
        arrays.append(q.numpy())
    bits = order0_entropy_bits(np.concatenate([a.reshape(-1) for a in arrays]))
    raw = sum(a.size for a in arrays)
    if cfg.codec == "ans":
        from pgolf.compress import entropy  # the range coder: carried only with compress.codec: ans

        return _timed(name, "ans", raw, bits, lambda: entropy.encode(arrays, cfg.ans)), perms
    blob = b"".join((a.T if cfg.transpose else a).tobytes() for a in arrays)
    codec = make_codec(cfg.codec, cfg)
    return _timed(name, cfg.codec, raw, bits, lambda: codec.compress(blob)), perms


def _encode_rest(rest: dict[str, torch.Tensor], cfg: CompressConfig) -> tuple[Stream, list[np.ndarray]]:
    """The rest stream (no permutations: the same return shape as :func:`_encode_group`, for one pool)."""
    blob = b"".join(_tensor_bytes(t) for t in rest.values())
    codec = make_codec(cfg.rest_codec, cfg)
    return _timed("rest", cfg.rest_codec, len(blob), None, lambda: codec.compress(shuffle(blob, cfg.rest_shuffle))), []


def serialize(entries: list[formats.Entry], cfg: CompressConfig, workers: int | None = None
              ) -> tuple[list[Stream], dict[str, Any]]:  # fmt: skip
    """The compressed streams of the quantized entries and the layout that decodes them.

    The groups and the rest stream are coded on ``workers`` threads (None: one per stream, up to the CPUs; 1: one
    after another); the streams, in the same order, and their bytes do not depend on it.
    """
    mats = _int_matrices(entries)
    groups: dict[str, list[str]] = {}
    for name in mats:
        groups.setdefault(group_key(name, cfg.grouping), []).append(name)
    # ans ignores the row order, so it gets no sort (and no permutation stream)
    sorts = {key: cfg.grouping == "role" and key in cfg.simsort and cfg.codec != "ans" for key in groups}
    rest = _rest_tensors(entries)
    jobs = [partial(_encode_group, f"group:{key}", [mats[n] for n in names], sorts[key], cfg)
            for key, names in groups.items()]  # fmt: skip
    with torch_threads(1):  # each sort on one thread, the pool's threads included (see torch_threads)
        done = parallel.run_all([*jobs, partial(_encode_rest, rest, cfg)], workers)
    streams = [stream for stream, _ in done]
    perms = [order for _, orders in done for order in orders]
    perm_dtype = "<u2" if all(p.size <= 1 << 16 for p in perms) else "<u4"
    perm_blob = b"".join(p.astype(perm_dtype).tobytes() for p in perms)
    if perms:
        perm_codec = make_codec(cfg.rest_codec, cfg)
        streams.append(_timed("perms", cfg.rest_codec, len(perm_blob), None, lambda: perm_codec.compress(perm_blob)))
    layout = {
        "groups": [{"key": key, "tensors": names, "simsort": sorts[key]} for key, names in groups.items()],
        "codec": cfg.codec,
        "transpose": cfg.transpose,
        "rest": [{"key": k, "dtype": dtype_name(t.dtype), "shape": list(t.shape)} for k, t in rest.items()],
        "rest_codec": cfg.rest_codec,
        "rest_shuffle": cfg.rest_shuffle,
        "perm_dtype": perm_dtype,
        "codecs": {k: getattr(cfg, k).model_dump() for k in CodecsConfig.model_fields},
    }
    return streams, layout


def _decode_group(group: dict, data: bytes, layout: dict, shapes: dict[str, tuple[int, int]],
                  cfg: CodecsConfig) -> list[np.ndarray]:  # fmt: skip
    tensor_shapes = [shapes[n] for n in group["tensors"]]
    if layout["codec"] == "ans":
        from pgolf.compress import entropy

        return entropy.decode(data, tensor_shapes)
    blob = make_codec(layout["codec"], cfg).decompress(data)
    if len(blob) != sum(r * c for r, c in tensor_shapes):
        raise CodecError(f"group {group['key']}: decoded {len(blob)} bytes, the layout needs another size")
    arrays, offset = [], 0
    for rows, cols in tensor_shapes:
        a = np.frombuffer(blob, dtype=np.int8, count=rows * cols, offset=offset)
        arrays.append(a.reshape(cols, rows).T if layout["transpose"] else a.reshape(rows, cols))
        offset += rows * cols
    return arrays


def _decode_streams(streams: dict[str, bytes], layout: dict[str, Any], shapes: dict[str, tuple[int, int]],
                    cfg: CodecsConfig, workers: int | None) -> tuple[list[list[np.ndarray]], bytes, bytes]:  # fmt: skip
    """Every stream decoded, on ``workers`` threads: the groups' arrays (still row-sorted), rest and permutations."""
    rest_codec = make_codec(layout["rest_codec"], cfg)
    jobs = [partial(_decode_group, group, streams[f"group:{group['key']}"], layout, shapes, cfg)
            for group in layout["groups"]]  # fmt: skip
    jobs.append(lambda: unshuffle(rest_codec.decompress(streams["rest"]), layout["rest_shuffle"]))
    if "perms" in streams:
        jobs.append(lambda: rest_codec.decompress(streams["perms"]))
    done, count = parallel.run_all(jobs, workers), len(layout["groups"])
    return done[:count], done[count], done[count + 1] if "perms" in streams else b""


def deserialize(
    streams: dict[str, bytes], layout: dict[str, Any], quant_manifest: dict[str, Any], workers: int | None = None
) -> list[formats.Entry]:
    """The quantized entries back from the streams of :func:`serialize` (bit-exact); needs no params.

    The streams are decoded on ``workers`` threads (None: one per stream, up to the CPUs; 1: one after another).
    """
    cfg = CodecsConfig.model_validate(layout["codecs"])
    records = {r["name"]: r for r in quant_manifest["entries"]}
    shapes = {n: tuple(r["shape"]) for n, r in records.items()}
    decoded, rest, perm_blob = _decode_streams(streams, layout, shapes, cfg, workers)
    tensors: dict[str, torch.Tensor] = {}
    perm_item = np.dtype(layout["perm_dtype"]).itemsize
    perm_pos = 0
    for group, arrays in zip(layout["groups"], decoded, strict=True):
        for name, q in zip(group["tensors"], arrays, strict=True):
            if group["simsort"]:
                n = q.shape[0]
                order = np.frombuffer(perm_blob, dtype=layout["perm_dtype"], count=n, offset=perm_pos)
                perm_pos += n * perm_item
                q = q[inverse(order.astype(np.int64))]
            tensors[f"{name}.q"] = torch.from_numpy(np.array(q, dtype=np.int8, order="C"))
    offset = 0
    for spec in layout["rest"]:
        size = int(np.prod(spec["shape"], dtype=np.int64)) * torch_dtype(spec["dtype"]).itemsize
        if offset + size > len(rest):
            raise CodecError(f"rest stream ends before tensor {spec['key']}")
        tensors[spec["key"]] = _tensor_from(rest[offset : offset + size], spec["dtype"], spec["shape"])
        offset += size
    if offset != len(rest) or perm_pos != len(perm_blob):
        raise CodecError("rest or permutation stream has trailing bytes the layout does not describe")
    return formats.from_tensors(tensors, quant_manifest)
