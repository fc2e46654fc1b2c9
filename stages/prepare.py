"""Stage prepare: corpus -> data/docs/{train,val}.jsonl + manifest.json (or the published shards for fineweb_cached).

The source (``data.source``) writes its documents into the emptied output folder and returns what the manifest
records: the source files and their sha256, the split sizes and the sha256 of every file written.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.data import docs
from pgolf.data.prepare import SOURCES
from pgolf.data.sources import DataConfig
from pgolf.files import fresh_dir
from pgolf.params import load_section


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    out: Path = Path("data/docs")


def prepare(cfg: DataConfig, paths: Paths) -> dict:
    """Run the configured source into ``paths.out`` (emptied first); write and return its manifest."""
    out = fresh_dir(paths.out)
    manifest = SOURCES[cfg.source](cfg, out)
    docs.write_manifest(out, manifest)
    return manifest


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg = load_section("data", paths.params)
    start = time.perf_counter()
    manifest = prepare(cfg, paths)
    if "splits" in manifest:
        parts = [f"{name} {s['docs']:,} docs / {s['text_bytes']:,} bytes" for name, s in manifest["splits"].items()]
    else:
        parts = [f"{kind} {count:,} tokens" for kind, count in manifest["tokens"].items()]
    print(f"prepare: {cfg.source} -> {paths.out}: {', '.join(parts)} in {time.perf_counter() - start:.1f}s")


if __name__ == "__main__":
    run(main)
