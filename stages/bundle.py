"""Stage bundle: the submission program artifacts/submission/train_gpt.py -- the sources of every stage from the
tokenizer's adoption to the evaluation (quantization and compression included) that the run's params use, minified
and compressed, then those params and the entry point (the counted code bytes). Its own stage, so that editing a
source re-runs the bundle (its bytes change) without re-running what the source's stage feeds."""

from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.compress.bundle import PROGRAM_FILE, bundle_files, left_out, packaged_params, program
from pgolf.config import read_params

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    out: Path = Path(f"artifacts/submission/{PROGRAM_FILE}")


def bundle(params: dict, paths: Paths, root: Path = ROOT) -> tuple[int, int]:
    """Write the submission program of ``params`` to ``paths.out``; returns (source files, bytes)."""
    code = program(params, root)
    paths.out.parent.mkdir(parents=True, exist_ok=True)
    paths.out.write_bytes(code.encode("latin-1"))  # ASCII unless bundle.text: latin1
    return len(bundle_files(root, packaged_params(params))), len(code)


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    params = read_params(paths.params)
    files, size = bundle(params, paths)
    cfg = params["bundle"]
    off = left_out(packaged_params(params))
    print(f"bundle: {files} source files -> {paths.out} ({size:,} B, {cfg['codec']}, minify {cfg['minify']}); "
          f"left out by the params: {', '.join(Path(m).stem for m in off) or 'nothing'}")  # fmt: skip


if __name__ == "__main__":
    run(main)
