"""Stage prepare: corpus -> data/docs/{train,val}.jsonl + manifest (or the published shards for fineweb_cached)."""

import argparse
import time

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.data.sources import DataConfig, prepare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="data/docs")
    args = parser.parse_args()

    cfg = load_section("data", DataConfig, args.params)
    start = time.perf_counter()
    manifest = prepare(cfg, args.out)
    if "splits" in manifest:
        parts = [f"{name} {s['docs']:,} docs / {s['text_bytes']:,} bytes" for name, s in manifest["splits"].items()]
    else:
        parts = [f"{kind} {count:,} tokens" for kind, count in manifest["tokens"].items()]
    print(f"prepare: {cfg.source} -> {args.out}: {', '.join(parts)} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    run(main)
