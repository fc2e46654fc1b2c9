"""Stage tokenize: documents -> train/val token shards in the challenge format + the val byte sidecar."""

import argparse
import time

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.data.encode import tokenize
from pgolf.data.sources import DataConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--docs", default="data/docs")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--out", default="data/shards")
    args = parser.parse_args()

    cfg = load_section("data", DataConfig, args.params)
    start = time.perf_counter()
    manifest = tokenize(args.docs, args.tokenizer, cfg, args.out)
    splits = {name: split["tokens"] for name, split in manifest["splits"].items()}
    print(
        f"tokenize: {splits} tokens, bytes by {manifest['byte_count']} -> {args.out} "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run(main)
