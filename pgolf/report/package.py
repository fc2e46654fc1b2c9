"""Write ``train_gpt.py``, the submission program of a run: the code bundle, the run's params and the entry point
that runs the whole pipeline from the challenge's folder layout (``stages/program.py``).

The bundle stage writes the same file for the run's params (``artifacts/submission/train_gpt.py``, the counted code
of ``dvc repro``); this command writes it for any params file and data variant, e.g. a preset before its run.
:mod:`pgolf.report.records` checks each seed's counted file against this checkout (:func:`checked_program`).

    python -m pgolf.report.package --out records/my_run                  # params.yaml, data.variant's layout
    python -m pgolf.report.package --out DIR --params presets/record_1855.yaml \
        --variant sp8192_lossless_caps_caseops_v1_reserved
"""

from __future__ import annotations

from pathlib import Path

from pgolf.cli import Parser, run
from pgolf.compress.bundle import PROGRAM_FILE, packaged_params, program
from pgolf.config import read_params
from pgolf.errors import PgolfError

ROOT = Path(__file__).resolve().parents[2]


def checked_program(runs: dict[str, tuple[dict, bytes]]) -> bytes:
    """The first run's train_gpt.py, after checking that this checkout's code is the code each run was scored with:
    ``runs`` (where -> (the run's params, the train_gpt.py it counted)) rebuilt from these sources, byte for byte."""
    for where, (params, counted) in runs.items():
        if program(params, ROOT).encode("latin-1") != counted:
            raise PgolfError(f"{where}: its {PROGRAM_FILE} is not this checkout's code; check out the commit "
                             "the run was trained at (metrics/train.json: commit), so that train_gpt.py is the "
                             "code that ran")  # fmt: skip
    return next(iter(runs.values()))[1]


REQUIREMENTS = {"brotli": "brotli>=1.1", "zstd": "zstandard>=0.22", "ans": "constriction>=0.4"}
"""The package a codec needs beyond torch, numpy, pydantic, PyYAML and SentencePiece (lrzip is a system binary)."""


def requirements(params: dict) -> str:
    """requirements.txt of the packaged program for the run's codecs."""
    lines = ["pydantic>=2.7", "pyyaml>=6", "sentencepiece>=0.2", "brotli>=1.1"]  # brotli: the wrapper, the rest
    codecs = {params["compress"]["codec"], params["compress"]["rest_codec"], params["bundle"]["codec"]}
    lines += sorted({REQUIREMENTS[c] for c in codecs if c in REQUIREMENTS} - set(lines))
    if "lrzip" in codecs:
        lines.append("# and the lrzip binary: apt-get install lrzip")
    return "\n".join(lines) + "\n"


def write(out: Path, params: dict) -> int:
    """Write ``out/train_gpt.py``; returns its bytes."""
    out.mkdir(parents=True, exist_ok=True)
    text = program(params, ROOT)
    (out / PROGRAM_FILE).write_bytes(text.encode("latin-1"))  # ASCII unless bundle.text: latin1
    return len(text)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the folder to write train_gpt.py into")
    parser.add_argument("--params", default="params.yaml", help="the run's params (default: %(default)s)")
    parser.add_argument("--variant", help="the challenge data variant (default: the params' data.variant)")
    args = parser.parse_args(argv)
    params = packaged_params(read_params(args.params), args.variant)
    size = write(Path(args.out), params)
    print(f"package: {Path(args.out) / PROGRAM_FILE} ({size:,} B, the counted code); run it inside the folder with "
          f"./data/datasets/{params['data']['variant']}/fineweb_*.bin and one ./data/tokenizers/*.model")  # fmt: skip


if __name__ == "__main__":
    run(main)
