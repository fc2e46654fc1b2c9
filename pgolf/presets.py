"""Presets: complete parameter sets of the seed submissions, checked and applied to params.yaml.

    python -m pgolf.presets list
    python -m pgolf.presets check presets/pr1492.yaml
    python -m pgolf.presets apply presets/cpu/pr374.yaml      # then: dvc params diff; dvc repro

A preset holds every section of params.yaml. ``apply`` validates each section against its typed model first (an
unknown or missing key stops it, naming the key) and then replaces params.yaml with the preset, so
``dvc params diff`` lists exactly what changed and ``git checkout params.yaml`` goes back to the default.
``presets/<seed>.yaml`` are the submissions' own values (GPUs, FineWeb); ``presets/cpu/<seed>.yaml`` are their CPU
twins: the same techniques at small sizes on the embedded corpus.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pgolf.cli import Parser, run
from pgolf.config import PARAMS_FILE, Section
from pgolf.params import load_all

PRESETS_DIR = Path("presets")


def check(path: Path | str) -> dict[str, Section]:
    """Every section of a params file, validated; ConfigError on a missing, unknown or malformed section."""
    return load_all(path)


def apply(preset: Path | str, params: Path | str = PARAMS_FILE) -> None:
    """Check ``preset`` and make it the params file."""
    check(preset)
    shutil.copyfile(preset, params)


def available(root: Path = PRESETS_DIR) -> list[Path]:
    return sorted(root.rglob("*.yaml"))


def main() -> None:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="the presets in presets/")
    for name in ("check", "apply"):
        p = sub.add_parser(name, help=f"{name} a preset")
        p.add_argument("preset", type=Path)
        p.add_argument("--params", type=Path, default=PARAMS_FILE)
    args = parser.parse_args()
    if args.command == "list":
        for path in available():
            print(path)
    elif args.command == "check":
        check(args.preset)
        print(f"{args.preset}: every section is valid")
    else:
        apply(args.preset, args.params)
        print(f"{args.params} <- {args.preset}; `dvc params diff` shows the change, `dvc repro` runs it")


if __name__ == "__main__":
    run(main)
