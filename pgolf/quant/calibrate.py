"""The calibrate stage: Hessians of the exported model on training tokens, saved for the quantize stage."""

from __future__ import annotations

import time
from pathlib import Path

from pgolf import dist
from pgolf.export import load_exported
from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians, reduce_hessians
from pgolf.train import checkpoint as ckpt

HESSIANS_FILE = "hessians.safetensors"


def calibrate(cfg: CalibrateConfig, export_dir: Path, shard_dir: Path, out: Path) -> dict:
    """Collect, reduce and save the Hessians; returns their meta (tokens, batches, schedule, seconds)."""
    info = dist.init()
    try:
        start = time.perf_counter()
        model, meta = load_exported(export_dir)
        model = model.to(info.device)
        looped = meta["looping_from_step"] is not None
        windows = calibration_windows(shard_dir, cfg, info.rank, info.world_size)
        hessians, tokens = collect_hessians(model, windows, looped=looped, doc_isolated=cfg.doc_isolated)
        hessians, tokens = reduce_hessians(hessians, tokens, info.device)
        summary = {"tokens": tokens, "batches": cfg.batches, "looped": looped, "doc_isolated": cfg.doc_isolated,
                   "matrices": len(hessians), "seconds": round(time.perf_counter() - start, 2),
                   "world_size": info.world_size}  # fmt: skip
        if info.is_main:
            ckpt.save_tensors(out / HESSIANS_FILE, hessians, summary)
    finally:
        dist.shutdown()
    return summary
