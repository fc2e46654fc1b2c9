"""Write ``train_gpt.py``, the submission program of a run: the code bundle, the run's params and the entry point
that runs the whole pipeline from the challenge's folder layout (``stages/program.py``).

A command, not a DVC stage: it reads nothing a stage produces (the sources and one params file), so a cached
stage would only add a copy; :mod:`pgolf.report.records` calls it for a records folder. Its bytes are the code
bytes the challenge counts for a submission made with it: every stage from the tokenizer's adoption to the
evaluation, in the bundle's wrapper (``bundle.codec``, ``bundle.minify``).

    python -m pgolf.report.package --out records/my_run                  # params.yaml, data.variant's layout
    python -m pgolf.report.package --out DIR --params presets/record_1855.yaml \
        --variant sp8192_lossless_caps_caseops_v1_reserved
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

from pgolf.cli import Parser, run
from pgolf.compress.bundle import BUNDLE_FILE, ENTRIES, PROGRAM_FILE, BundleConfig, build, bundle_files
from pgolf.config import read_params
from pgolf.errors import PgolfError

ROOT = Path(__file__).resolve().parents[2]
PACKAGED = ("stages/program.py", "stages/tokenizer.py", "stages/tokenize.py", *ENTRIES)
"""The program's files: its entry point and the stages it runs (imported by name, so listed)."""


def packaged_params(params: dict, variant: str | None = None) -> dict:
    """The run's params with the data taken from the challenge's layout (``fineweb_cached`` of ``variant``)."""
    params = copy.deepcopy(params)
    params["data"].update(source="fineweb_cached", variant=variant or params["data"]["variant"])
    return params


def program(params: dict, root: Path = ROOT) -> str:
    """The text of ``train_gpt.py`` for ``params`` (the bundle of :data:`PACKAGED`, then its entry point)."""
    cfg = BundleConfig.model_validate(params["bundle"])
    text = yaml.safe_dump(params, sort_keys=False)
    then = (
        f"import importlib,sys\nimportlib.invalidate_caches()\nsys.path.insert(0,'')\n"
        f"from pgolf.cli import run\nfrom stages.program import main\nrun(lambda:main({text!r}))\n"
    )
    return build(root, cfg, bundle_files(root, PACKAGED), then=then)


def checked_program(params: dict, bundles: dict[str, bytes], root: Path = ROOT) -> str:
    """:func:`program` of ``params``, after checking that this checkout's code is the code each run was scored
    with: ``bundles`` (where -> the run's counted bundle) rebuilt from these sources, byte for byte."""
    now = build(root, BundleConfig.model_validate(params["bundle"]), bundle_files(root)).encode("ascii")
    for where, bundle in bundles.items():
        if bundle != now:
            raise PgolfError(f"{where}: its {BUNDLE_FILE} is not this checkout's code; check out the commit "
                             "the run was trained at (metrics/train.json: commit), so that train_gpt.py is the "
                             "code that ran")  # fmt: skip
    return program(packaged_params(params), root)


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
    text = program(params)
    (out / PROGRAM_FILE).write_text(text, encoding="ascii")
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
