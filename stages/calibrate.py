"""Stage calibrate: input Hessians of every quantized matrix of the exported model, on training tokens only ->
artifacts/calibrate/hessians.safetensors (its own stage, so re-quantizing never recomputes them)."""

import argparse
import json
from pathlib import Path

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.dist import dist_info, print0
from pgolf.quant.calibrate import calibrate
from pgolf.quant.hessian import CalibrateConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--export", default="artifacts/export")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--out", default="artifacts/calibrate")
    parser.add_argument("--metrics", default="metrics/calibrate.json")
    args = parser.parse_args()

    cfg = load_section("calibrate", CalibrateConfig, args.params)
    summary = calibrate(cfg, Path(args.export), Path(args.shards), Path(args.out))
    if dist_info().is_main:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n")
    print0(
        f"calibrate: {summary['matrices']} Hessians from {summary['tokens']:,} training tokens "
        f"(looped={summary['looped']}) in {summary['seconds']:.1f}s -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
