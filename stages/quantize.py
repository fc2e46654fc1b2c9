"""Stage quantize: GPTQ/RTN with SDClip scales, int8 gates, fp16 passthrough, LQER (and AWQ-lite, Hadamard when on)
-> artifacts/quant/; per-tensor errors and the ladder's ``dequantized`` rung -> metrics/quantize.json and
metrics/quantize_tensors.csv. Never trains: it reads the exported weights and the calibrate stage's Hessians."""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf import artifacts, tensorio
from pgolf.cli import parse_paths, run
from pgolf.dist import dist_info
from pgolf.files import write_csv, write_json
from pgolf.params import load_section
from pgolf.quant import formats
from pgolf.quant.hessian import hessian_rows
from pgolf.quant.policy import QuantizeConfig, decide
from pgolf.quant.quantize import dequantized_model, quantize_state
from pgolf.runcard import run_card, take_lease
from pgolf.score.scorer import Ladder, ScoreConfig


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    export: Path = Path("artifacts/export")
    calibrate: Path = Path("artifacts/calibrate")
    shards: Path = Path("data/shards")
    tokenizer: Path = Path("artifacts/tokenizer")
    out: Path = Path("artifacts/quant")
    metrics: Path = Path("metrics/quantize.json")
    tensors: Path = Path("metrics/quantize_tensors.csv")


TENSOR_COLUMNS = ["name", "layer", "kind", "bits", "numel", "rel_error", "h_error", "lqer", "awq"]


def quantize(cfg: QuantizeConfig, score: ScoreConfig, paths: Paths) -> dict:
    """Quantize the export with the calibrate stage's Hessians into ``paths.out``; write and return the metrics,
    with the ladder's ``dequantized`` rung (the one scorer on the ``score`` section's documents)."""
    start = time.perf_counter()
    state, meta = tensorio.load_tensors(paths.export / artifacts.MODEL_FILE)
    hessians, calib = tensorio.load_tensors(paths.calibrate / artifacts.HESSIANS_FILE)
    template = artifacts.template(meta["model_config"])
    rows = hessian_rows(template, calib["looped"], calib["tokens"]) if cfg.awq.enabled else None
    entries, reports, chosen = quantize_state(state, hessians, decide(template, cfg), cfg, rows)
    seconds = time.perf_counter() - start
    train = {k: meta[k] for k in ("steps", "looping_from_step", "averaging")}
    formats.save_quantized(paths.out, entries, {"model_config": meta["model_config"], "train": train,
                                                "quantize": cfg.model_dump()})  # fmt: skip
    info = dist_info()
    model = dequantized_model(entries, meta["model_config"]).to(info.device)
    ladder = Ladder.load(score, paths.shards, paths.tokenizer, model.cfg.bos_id)
    looped = meta["looping_from_step"] is not None
    metrics = {"documents": ladder.documents, "dequantized": ladder.rung(model, looped, "dequantized", info.is_main),
               "lqer_tensors": chosen, "awq_groups": {r["name"]: [int(x) for x in r["awq"].split()] for r in reports
                                                       if r["awq"]},
               "quantize_seconds": round(seconds, 2),
               "mean_rel_error": sum(r["rel_error"] for r in reports) / max(len(reports), 1),
               "total_h_error": sum(r["h_error"] for r in reports), "run": run_card(start, info)}  # fmt: skip
    write_json(paths.metrics, metrics)
    write_csv(paths.tensors, TENSOR_COLUMNS, reports)
    return {**metrics, "tensors": reports}


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    take_lease(1)  # a device of a shared box (PGOLF_LEASE_DIR), before anything touches CUDA
    cfg: QuantizeConfig = load_section("quantize", paths.params)
    metrics = quantize(cfg, load_section("score", paths.params), paths)
    print(f"quantize: {cfg.method} -> {paths.out}; dequantized val_bpb {metrics['dequantized']['val_bpb']:.4f}; "
          f"LQER on {metrics['lqer_tensors']} ({metrics['quantize_seconds']:.1f}s)")  # fmt: skip


if __name__ == "__main__":
    run(main)
