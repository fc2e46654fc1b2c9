"""``artifacts/submission/model.bin``: the quantized model as counted bytes, and the way back to a runnable GPT.

The container's manifest carries everything needed to rebuild the model without params.yaml or any other file:
the resolved model config, whether the model runs its looped layer schedule, the quantized-tensor manifest (format
of every tensor) and the per-group layout (streams, codecs and their settings). The evaluate stage reads only this
file (and the code bundle beside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from pgolf.artifacts import build_model
from pgolf.compress import container, parallel, pergroup
from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT
from pgolf.quant import formats

FORMAT = "pgolf.model"


def pack_model(entries: list[formats.Entry], quant_meta: dict[str, Any], cfg: pergroup.CompressConfig,
               workers: int | None = None) -> tuple[bytes, list[pergroup.Stream]]:  # fmt: skip
    """The container bytes of the quantized ``entries``; ``quant_meta`` is artifacts/quant/manifest.json.

    ``workers``: threads that code the streams (None: one per stream, up to the CPUs); the bytes do not depend on it.
    """
    streams, layout = pergroup.serialize(entries, cfg, workers)
    manifest = {
        "format": FORMAT,
        "model_config": quant_meta["model_config"],
        "looped": quant_meta["train"]["looping_from_step"] is not None,
        "quant": quant_meta["formats"],
        "layout": layout,
    }
    return container.pack(manifest, [(s.name, s.data) for s in streams]), streams


def unpack_model(blob: bytes, source: str = container.MODEL_BIN, workers: int | None = None
                 ) -> tuple[list[formats.Entry], dict[str, Any]]:  # fmt: skip
    """The quantized entries and the container manifest of a model.bin's bytes (streams decoded on ``workers``
    threads, None: one per stream up to the CPUs)."""
    manifest, streams = container.unpack(blob, source)
    if manifest.get("format") != FORMAT:
        raise container.ContainerError(f"{source}: holds {manifest.get('format')!r}, not a {FORMAT!r}")
    return pergroup.deserialize(streams, manifest["layout"], manifest["quant"], workers), manifest


def load_model(path: Path, workers: int | None = None) -> tuple[GPT, bool]:
    """The dequantized GPT stored in a model.bin and whether it runs looped (CPU, eval mode)."""
    if not Path(path).is_file():
        raise container.ContainerError(f"{path}: not found; run `dvc repro compress` first")
    entries, manifest = unpack_model(Path(path).read_bytes(), str(path), workers)
    model = build_model(manifest["model_config"], formats.dequantized_state(entries))
    return model.eval(), bool(manifest["looped"])


def check_identical(expected: list[formats.Entry], got: list[formats.Entry]) -> None:
    """Raise unless both entry lists hold the same tensors bit for bit (and the same manifest): the compress stage
    reads model.bin back through this, so a codec bug can never reach the evaluate stage."""
    t1, m1 = formats.to_tensors(expected)
    t2, m2 = formats.to_tensors(got)
    if m1 != m2 or t1.keys() != t2.keys():
        raise PgolfError("model.bin round trip changed the quantized manifest")
    for key, t in t1.items():
        if t.dtype != t2[key].dtype or not torch.equal(
            t.reshape(-1).view(torch.uint8), t2[key].reshape(-1).view(torch.uint8)
        ):
            raise PgolfError(f"model.bin round trip changed tensor {key}")


def pool_size(streams: list[pergroup.Stream], workers: int | None) -> int:
    """The threads that coded ``streams``: one per stream but the permutations (coded after the sorts), at most
    ``workers`` (None: one per CPU)."""
    jobs = sum(s.name != "perms" for s in streams)
    return parallel.default_workers(jobs) if workers is None else max(1, min(workers, jobs))


def stream_metrics(blob: bytes, streams: list[pergroup.Stream]) -> dict:
    """What metrics/compress.json says of a model.bin: its bytes, the container's overhead, and per stream and per
    codec the bytes against each integer group's zeroth-order entropy bound."""
    groups = []
    for s in streams:
        bound = None if s.entropy_bits is None else s.entropy_bits / 8
        groups.append({"stream": s.name, "codec": s.codec, "raw_bytes": s.raw_bytes, "bytes": len(s.data),
                       "entropy_bound_bytes": None if bound is None else round(bound, 1),
                       "ratio_to_bound": None if not bound else round(len(s.data) / bound, 5),
                       "seconds": round(s.seconds, 3)})  # fmt: skip
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
        "groups": groups,
    }
