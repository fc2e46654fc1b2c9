"""Stage export: the final weights (EMA by default) in their final dtypes -> artifacts/export/, and the
pre-quantization rungs of the ladder -> metrics/export.json: the raw weights, the chosen weights as exported and
the unigram baseline, all by the one scorer on the ``score`` section's documents.

The model is rebuilt from the configuration stored with the checkpoint, never from params.yaml, and scored with
the layer schedule it finished training with (recurrence on if it was switched on).
"""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf import artifacts, dist, tensorio
from pgolf.cli import parse_paths, run
from pgolf.files import write_json
from pgolf.params import load_section
from pgolf.runcard import run_card
from pgolf.score.scorer import Ladder, ScoreConfig
from pgolf.score.unigram import unigram_rung
from pgolf.train.export import ExportConfig, cast_final


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    train: Path = Path("artifacts/train")
    shards: Path = Path("data/shards")
    tokenizer: Path = Path("artifacts/tokenizer")
    out: Path = Path("artifacts/export")
    metrics: Path = Path("metrics/export.json")


def export(cfg: ExportConfig, score: ScoreConfig, paths: Paths) -> dict:
    """Write the chosen weights + meta into ``paths.out`` and the pre-quantization rungs into ``paths.metrics``;
    returns the metrics."""
    started = time.perf_counter()
    info = dist.dist_info()
    chosen, meta = artifacts.load_trained(paths.train, cfg.weights)
    chosen = cast_final(chosen, cfg)
    looped = meta["looping_from_step"] is not None
    ladder = Ladder.load(score, paths.shards, paths.tokenizer, chosen.cfg.bos_id)
    metrics = {"documents": ladder.documents, "byte_count": ladder.val.byte_count, "looped": looped,
               "weights": cfg.weights}  # fmt: skip
    metrics[f"prequant_{cfg.weights}"] = ladder.rung(chosen.to(info.device), looped, cfg.weights, info.is_main)
    if cfg.weights != "raw":
        raw = artifacts.load_trained(paths.train, "raw")[0]
        metrics["prequant_raw"] = ladder.rung(raw.to(info.device), looped, "raw", info.is_main)
    metrics["unigram_baseline"] = unigram_rung(ladder, paths.shards, chosen.cfg.vocab_size, info.device)
    metrics["run"] = run_card(started, info)
    if info.is_main:
        export_meta = {**meta, "weights": cfg.weights, "dtype": cfg.dtype, "embedding_dtype": cfg.embedding_dtype}
        tensorio.save_tensors(paths.out / artifacts.MODEL_FILE, chosen.state_dict(), export_meta)
        write_json(paths.out / artifacts.META_FILE, export_meta)
        write_json(paths.metrics, metrics)
    return metrics


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg: ExportConfig = load_section("export", paths.params)
    metrics = export(cfg, load_section("score", paths.params), paths)
    scores = {k: round(v["val_bpb"], 4) for k, v in metrics.items() if isinstance(v, dict) and "val_bpb" in v}
    print(f"export: {cfg.weights} weights -> {paths.out}; pre-quant val_bpb {scores} on "
          f"{metrics['documents']['count']} documents ({metrics['byte_count']} bytes)")  # fmt: skip


if __name__ == "__main__":
    run(main)
