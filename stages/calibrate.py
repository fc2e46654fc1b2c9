"""Stage calibrate: the input Hessians H = sum x x^T of every quantized matrix of the exported model (and of the LM
head's input), on training tokens only -> artifacts/calibrate/hessians.safetensors; metrics/calibrate.json. Its own
stage, so that re-quantizing never recomputes them.

Before collecting, every calibration document is checked against the validation documents' hashes (timed apart:
the Hessian collection counts in the training budget, the check does not).
"""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf import artifacts, dist, tensorio
from pgolf.cli import parse_paths, run
from pgolf.data import shards
from pgolf.data.provenance import recorded_check
from pgolf.files import write_json
from pgolf.params import load_section
from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians, reduce_hessians
from pgolf.runcard import run_card, take_lease


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    export: Path = Path("artifacts/export")
    shards: Path = Path("data/shards")
    out: Path = Path("artifacts/calibrate")
    metrics: Path = Path("metrics/calibrate.json")


KEPT = ("tokens", "batches", "looped", "doc_isolated", "matrices", "world_size")
"""What the Hessians carry: what they are, never how long they took, so every run writes the same bytes."""


def calibrate(cfg: CalibrateConfig, paths: Paths) -> dict:
    """Check the calibration documents, then collect, reduce and save the Hessians; returns the metrics (tokens,
    batches, schedule, seconds of the collection, provenance)."""
    check_start = time.perf_counter()
    model, meta = artifacts.load_exported(paths.export)
    provenance = recorded_check(paths.shards, shards.read_manifest(paths.shards), what="calibrate")
    provenance["seconds"] = round(time.perf_counter() - check_start, 3)
    info = dist.init()
    try:
        start = time.perf_counter()
        model = model.to(info.device)
        looped = meta["looping_from_step"] is not None
        windows = calibration_windows(paths.shards, cfg, info.rank, info.world_size)
        hessians, tokens = collect_hessians(model, windows, looped=looped, doc_isolated=cfg.doc_isolated,
                                           total=cfg.batches)  # fmt: skip
        hessians, tokens = reduce_hessians(hessians, tokens, info.device)
        summary = {"tokens": tokens, "batches": cfg.batches, "looped": looped, "doc_isolated": cfg.doc_isolated,
                   "matrices": len(hessians), "seconds": round(time.perf_counter() - start, 2),
                   "world_size": info.world_size, "hardware": info.hardware, "provenance": provenance}  # fmt: skip
        summary["run"] = run_card(check_start, info)
        if info.is_main:
            tensorio.save_tensors(paths.out / artifacts.HESSIANS_FILE, hessians, {k: summary[k] for k in KEPT})
            write_json(paths.metrics, summary)
    finally:
        dist.shutdown()
    return summary


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    take_lease(1)  # a device of a shared box (PGOLF_LEASE_DIR), before anything touches CUDA
    summary = calibrate(load_section("calibrate", paths.params), paths)
    dist.print0(f"calibrate: {summary['matrices']} Hessians from {summary['tokens']:,} training tokens "
                f"(looped={summary['looped']}) in {summary['seconds']:.1f}s -> {paths.out}")  # fmt: skip


if __name__ == "__main__":
    run(main)
