"""The calibrate stage: Hessians of the exported model on training tokens, saved for the quantize stage."""

from __future__ import annotations

import time
from pathlib import Path

from pgolf import artifacts, dist, tensorio
from pgolf.data import shards
from pgolf.data.provenance import check_training_documents
from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians, reduce_hessians


def calibrate(cfg: CalibrateConfig, export_dir: Path, shard_dir: Path, out: Path) -> dict:
    """Check that no calibration document is a validation document, then collect, reduce and save the Hessians;
    returns their meta (tokens, batches, schedule, seconds: the Hessian collection, which counts in the training
    budget; the provenance check is timed apart)."""
    check_start = time.perf_counter()
    model, meta = artifacts.load_exported(export_dir)
    provenance = check_training_documents(shard_dir, shards.shard_paths(shard_dir, "train"), model.cfg.bos_id,
                                          what="calibrate", progress=dist.dist_info().is_main)  # fmt: skip
    provenance["seconds"] = round(time.perf_counter() - check_start, 3)
    info = dist.init()
    try:
        start = time.perf_counter()
        model = model.to(info.device)
        looped = meta["looping_from_step"] is not None
        windows = calibration_windows(shard_dir, cfg, info.rank, info.world_size)
        hessians, tokens = collect_hessians(model, windows, looped=looped, doc_isolated=cfg.doc_isolated,
                                           total=cfg.batches)  # fmt: skip
        hessians, tokens = reduce_hessians(hessians, tokens, info.device)
        summary = {"tokens": tokens, "batches": cfg.batches, "looped": looped, "doc_isolated": cfg.doc_isolated,
                   "matrices": len(hessians), "seconds": round(time.perf_counter() - start, 2),
                   "world_size": info.world_size, "hardware": info.hardware, "provenance": provenance}  # fmt: skip
        if info.is_main:  # with the Hessians only what they are, not how long they took: the same bytes every run
            kept = {k: summary[k] for k in ("tokens", "batches", "looped", "doc_isolated", "matrices", "world_size")}
            tensorio.save_tensors(out / artifacts.HESSIANS_FILE, hessians, kept)
    finally:
        dist.shutdown()
    return summary
