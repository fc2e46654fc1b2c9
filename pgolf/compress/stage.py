"""The compress stage: artifacts/quant -> artifacts/submission/model.bin + metrics/compress.json (the code bundle
beside it is the bundle stage's, :mod:`pgolf.compress.bundle`, so that editing a source re-runs only the bundle).

After writing, the stage reads model.bin back and checks that every quantized tensor comes out bit-identical (the
decompression time it reports is that of this check), so a codec bug can never reach the evaluate stage. Both the
coding and the read-back run one stream per worker thread (``workers`` in the metrics; the bytes do not depend on
it), the read-back exactly as the evaluate stage decodes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from pgolf import tensorio
from pgolf.compress import container, parallel, pergroup, submission
from pgolf.errors import PgolfError
from pgolf.quant import formats


class CompressConfig(pergroup.SerializeConfig):
    """params.yaml ``compress``."""


def load_quantized(quant_dir: Path) -> tuple[list[formats.Entry], dict]:
    """The quantize stage's entries and its manifest.json."""
    tensors, _ = tensorio.load_tensors(quant_dir / formats.QUANT_FILE)
    meta = json.loads((quant_dir / formats.MANIFEST_FILE).read_text(encoding="utf-8"))
    return formats.from_tensors(tensors, meta["formats"]), meta


def check_identical(expected: list[formats.Entry], got: list[formats.Entry]) -> None:
    """Raise unless both entry lists hold the same tensors bit for bit (and the same manifest)."""
    t1, m1 = formats.to_tensors(expected)
    t2, m2 = formats.to_tensors(got)
    if m1 != m2 or t1.keys() != t2.keys():
        raise PgolfError("model.bin round trip changed the quantized manifest")
    for key, t in t1.items():
        if t.dtype != t2[key].dtype or not torch.equal(
            t.reshape(-1).view(torch.uint8), t2[key].reshape(-1).view(torch.uint8)
        ):
            raise PgolfError(f"model.bin round trip changed tensor {key}")


def group_metrics(streams: list[pergroup.Stream]) -> list[dict]:
    rows = []
    for s in streams:
        bound = None if s.entropy_bits is None else s.entropy_bits / 8
        rows.append({"stream": s.name, "codec": s.codec, "raw_bytes": s.raw_bytes, "bytes": len(s.data),
                     "entropy_bound_bytes": None if bound is None else round(bound, 1),
                     "ratio_to_bound": None if not bound else round(len(s.data) / bound, 5),
                     "seconds": round(s.seconds, 3)})  # fmt: skip
    return rows


def pool_size(streams: list[pergroup.Stream], workers: int | None) -> int:
    """The threads that coded ``streams``: one per stream but the permutations (coded after the sorts), at most
    ``workers`` (None: one per CPU)."""
    jobs = sum(s.name != "perms" for s in streams)
    return parallel.default_workers(jobs) if workers is None else max(1, min(workers, jobs))


def run_compress(cfg: CompressConfig, quant_dir: Path, out: Path, workers: int | None = None) -> dict:
    """Write model.bin into ``out``; returns metrics/compress.json's content.

    ``workers``: threads that code, and then read back, the streams (None: one per stream, up to the CPUs).
    """
    entries, meta = load_quantized(quant_dir)
    start = time.perf_counter()
    blob, streams = submission.pack_model(entries, meta, cfg, workers)
    compress_seconds = time.perf_counter() - start
    out.mkdir(parents=True, exist_ok=True)
    model_bin = out / container.MODEL_BIN
    model_bin.write_bytes(blob)
    start = time.perf_counter()
    restored, _ = submission.unpack_model(model_bin.read_bytes(), str(model_bin), workers)
    decompress_seconds = time.perf_counter() - start
    check_identical(entries, restored)
    groups = group_metrics(streams)
    by_codec: dict[str, int] = {}
    for g in groups:
        by_codec[g["codec"]] = by_codec.get(g["codec"], 0) + g["bytes"]
    ints = [g for g in groups if g["entropy_bound_bytes"] is not None]
    bound = sum(g["entropy_bound_bytes"] for g in ints)
    return {
        "model_bytes": len(blob),
        "container_overhead_bytes": len(blob) - sum(g["bytes"] for g in groups),
        "integer_bytes": sum(g["bytes"] for g in ints),
        "integer_entropy_bound_bytes": round(bound, 1),
        "integer_ratio_to_bound": round(sum(g["bytes"] for g in ints) / bound, 5) if bound else None,
        "bytes_by_codec": by_codec,
        "compress_seconds": round(compress_seconds, 3),
        "decompress_seconds": round(decompress_seconds, 3),
        "workers": pool_size(streams, workers),
        "groups": groups,
    }
