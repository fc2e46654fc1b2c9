"""Stage bundle: the self-extracting code file artifacts/submission/pgolf_code.py -- the package sources that
training and evaluation import, minified and compressed (the counted code bytes). Its own stage, so that editing a
source re-runs the bundle (its bytes change) without re-running what the source's stage feeds."""

import argparse
from pathlib import Path

from pgolf.cli import run
from pgolf.compress.bundle import BUNDLE_FILE, BundleConfig, write
from pgolf.config import load_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default=f"artifacts/submission/{BUNDLE_FILE}")
    args = parser.parse_args()

    cfg = load_section("bundle", BundleConfig, args.params)
    files, size = write(Path(__file__).resolve().parents[1], cfg, Path(args.out))
    print(f"bundle: {files} source files -> {args.out} ({size:,} B, {cfg.codec}, minify {cfg.minify})")


if __name__ == "__main__":
    run(main)
