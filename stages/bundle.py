"""Stage bundle: the self-extracting code file artifacts/submission/pgolf_code.py -- the package sources of every
stage from training to evaluation (quantization and compression included), minified and compressed (the counted
code bytes). Its own stage, so that editing a
source re-runs the bundle (its bytes change) without re-running what the source's stage feeds."""

from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.compress.bundle import BUNDLE_FILE, BundleConfig, build, bundle_files
from pgolf.params import load_section

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    out: Path = Path(f"artifacts/submission/{BUNDLE_FILE}")


def bundle(cfg: BundleConfig, paths: Paths, root: Path = ROOT) -> tuple[int, int]:
    """Build the bundle of ``root``'s sources into ``paths.out``; returns (source files, bytes)."""
    files = bundle_files(root)
    code = build(root, cfg, files)
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    paths.out.write_text(code, encoding="ascii")
    return len(files), len(code)


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg: BundleConfig = load_section("bundle", paths.params)
    files, size = bundle(cfg, paths)
    print(f"bundle: {files} source files -> {paths.out} ({size:,} B, {cfg.codec}, minify {cfg.minify})")


if __name__ == "__main__":
    run(main)
