"""Stage tokenizer: SentencePiece trained on the training documents (or the published one adopted)."""

import argparse
import os
import time

from pgolf import tokenizer
from pgolf.cli import run
from pgolf.config import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--docs", default="data/docs")
    parser.add_argument("--out", default="artifacts/tokenizer")
    args = parser.parse_args()

    cfg = load_section("tokenizer", tokenizer.TokenizerConfig, args.params)
    start = time.perf_counter()
    meta = tokenizer.build(args.docs, cfg, args.out, num_threads=os.cpu_count() or 1)
    print(
        f"tokenizer: {meta['origin']}, vocab {meta['vocab_size']}, caseops={meta['caseops']} -> {args.out} "
        f"in {time.perf_counter() - start:.1f}s"
    )


if __name__ == "__main__":
    run(main)
