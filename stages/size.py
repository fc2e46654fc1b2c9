"""Stage size: sum the bytes of the files in artifacts/submission/ -> metrics/size.json (written first), then fail
over the 16,000,000-byte limit unless artifact.enforce is false."""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.compress.size import SizeConfig, check, measure
from pgolf.files import write_json
from pgolf.params import load_section
from pgolf.runcard import run_card


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    submission: Path = Path("artifacts/submission")
    metrics: Path = Path("metrics/size.json")


def size(cfg: SizeConfig, paths: Paths) -> dict:
    """Measure the submission, write the metrics, then raise when it is over the limit and ``enforce`` is set."""
    started = time.perf_counter()
    metrics = {**measure(paths.submission, cfg.limit_bytes), "run": run_card(started)}
    write_json(paths.metrics, metrics)
    return metrics


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg: SizeConfig = load_section("artifact", paths.params)
    m = size(cfg, paths)
    print(f"size: {m['total_bytes']:,} B (model {m['model_bytes']:,} + code {m['code_bytes']:,}); limit "
          f"{cfg.limit_bytes:,}, margin {m['margin_bytes']:,}, fits: {m['fits']}")  # fmt: skip
    check(m, cfg.enforce)


if __name__ == "__main__":
    run(main)
