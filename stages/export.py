"""Stage export: the final weights (EMA by default) in their final dtypes -> artifacts/export/, and the
pre-quantization val_bpb of the raw and chosen weights -> metrics/export.json."""

import argparse
import json
from pathlib import Path

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.eval.score import ScoreConfig
from pgolf.export import ExportConfig, export


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train", default="artifacts/train")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--out", default="artifacts/export")
    parser.add_argument("--metrics", default="metrics/export.json")
    args = parser.parse_args()

    cfg = load_section("export", ExportConfig, args.params)
    score = load_section("score", ScoreConfig, args.params)
    metrics = export(cfg, score, Path(args.train), Path(args.shards), Path(args.tokenizer), Path(args.out))
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    scores = {k: round(v["val_bpb"], 4) for k, v in metrics.items() if isinstance(v, dict) and "val_bpb" in v}
    docs = metrics["documents"]["count"]
    print(f"export: {cfg.weights} weights -> {args.out}; pre-quant val_bpb {scores} on {docs} documents "
          f"({metrics['byte_count']} bytes)")  # fmt: skip


if __name__ == "__main__":
    run(main)
