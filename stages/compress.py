"""Stage compress: artifacts/quant -> artifacts/submission/model.bin (per-group streams in a checked container);
bytes per group and per codec against the entropy bound -> metrics/compress.json."""

import argparse
import json
from pathlib import Path

from pgolf.cli import run
from pgolf.compress.stage import CompressConfig, run_compress
from pgolf.config import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--quant", default="artifacts/quant")
    parser.add_argument("--out", default="artifacts/submission")
    parser.add_argument("--metrics", default="metrics/compress.json")
    args = parser.parse_args()

    cfg = load_section("compress", CompressConfig, args.params)
    metrics = run_compress(cfg, Path(args.quant), Path(args.out))
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    ratio = metrics["integer_ratio_to_bound"]
    print(f"compress: model.bin {metrics['model_bytes']:,} B ({cfg.codec}; integers at {ratio}x their entropy "
          f"bound); {metrics['compress_seconds']:.1f}s + {metrics['decompress_seconds']:.1f}s round trip")  # fmt: skip


if __name__ == "__main__":
    run(main)
