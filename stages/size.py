"""Stage size: sum the bytes of the files in artifacts/submission/ -> metrics/size.json (written first), then fail
over the 16,000,000-byte limit unless artifact.enforce is false."""

import argparse
import json
from pathlib import Path

from pgolf.cli import run
from pgolf.compress.size import SizeConfig, check, measure
from pgolf.config import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--submission", default="artifacts/submission")
    parser.add_argument("--metrics", default="metrics/size.json")
    args = parser.parse_args()

    cfg = load_section("artifact", SizeConfig, args.params)
    metrics = measure(Path(args.submission), cfg.limit_bytes)
    Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
    Path(args.metrics).write_text(json.dumps(metrics, indent=2) + "\n")
    print(
        f"size: {metrics['total_bytes']:,} B (model {metrics['model_bytes']:,} + code {metrics['code_bytes']:,}); "
        f"limit {cfg.limit_bytes:,}, margin {metrics['margin_bytes']:,}, fits: {metrics['fits']}"
    )
    check(metrics, cfg.enforce)


if __name__ == "__main__":
    run(main)
