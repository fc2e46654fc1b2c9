"""Stage quantize: GPTQ/RTN + SDClip, int8 gates, fp16 passthrough, LQER -> artifacts/quant/; per-tensor errors and
the dequantized model's val_bpb -> metrics/quantize.json, metrics/quantize_tensors.csv. Never trains."""

import argparse
from pathlib import Path

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.eval.score import ScoreConfig
from pgolf.quant.policy import QuantizeConfig
from pgolf.quant.quantize import run_quantize, write_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--export", default="artifacts/export")
    parser.add_argument("--calibrate", default="artifacts/calibrate")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--out", default="artifacts/quant")
    parser.add_argument("--metrics", default="metrics/quantize.json")
    parser.add_argument("--tensors", default="metrics/quantize_tensors.csv")
    args = parser.parse_args()

    cfg = load_section("quantize", QuantizeConfig, args.params)
    score = load_section("score", ScoreConfig, args.params)
    paths = {k: Path(getattr(args, k)) for k in ("export", "calibrate", "shards", "tokenizer", "out")}
    metrics = run_quantize(cfg, score, paths)
    write_metrics(metrics, Path(args.metrics), Path(args.tensors))
    q = metrics["dequantized"]
    print(f"quantize: {cfg.method} -> {args.out}; dequantized val_bpb {q['val_bpb']:.4f}; "
          f"LQER on {metrics['lqer_tensors']} ({metrics['quantize_seconds']:.1f}s)")  # fmt: skip


if __name__ == "__main__":
    run(main)
