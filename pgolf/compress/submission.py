"""``artifacts/submission/model.bin``: the quantized model as counted bytes, and the way back to a runnable GPT.

The container's manifest carries everything needed to rebuild the model without params.yaml or any other file:
the resolved model config, whether the model runs its looped layer schedule, the quantized-tensor manifest (format
of every tensor) and the per-group layout (streams, codecs and their settings). The evaluate stage reads only this
file (and the code bundle beside it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pgolf.artifacts import build_model
from pgolf.compress import container, pergroup
from pgolf.model.gpt import GPT
from pgolf.quant import formats

FORMAT = "pgolf.model"


def pack_model(entries: list[formats.Entry], quant_meta: dict[str, Any], cfg: pergroup.SerializeConfig,
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
    entries, manifest = unpack_model(Path(path).read_bytes(), str(path), workers)
    model = build_model(manifest["model_config"], formats.dequantized_state(entries))
    return model.eval(), bool(manifest["looped"])
