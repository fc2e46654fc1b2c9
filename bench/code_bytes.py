"""The counted code, lever by lever: the bytes of ``train_gpt.py`` (the submission program, what the bundle stage
writes) for params.yaml and every preset, and what each part of one program costs.

    python bench/code_bytes.py                                  # the levers, every params file
    python bench/code_bytes.py --parts presets/record_1855.yaml # + the cost of each part of that program

The levers, each on top of the one before: ``whole`` (every module any params may carry, docstrings and comments
stripped, names and annotations kept), ``selected`` (only the modules these params switch on:
``pgolf.compress.bundle.SWITCHES``), ``+ locals renamed, annotations dropped`` (the shipped minification:
:func:`pgolf.compress.bundle._minify`), ``latin1`` (``bundle.text: latin1``: the compressed bytes in a latin-1
literal instead of base85). The params' own ``bundle.codec`` is used
throughout. A part's cost is the program's bytes minus the bytes of the same program without that part's files
(compression shares context across files, so the costs do not add up exactly to the total).
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import publish  # noqa: E402
from pgolf.compress import bundle  # noqa: E402
from pgolf.config import read_params  # noqa: E402

PARAMS = ["params.yaml", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "presets").glob("*.yaml"))]
PARTS = {
    "attention backends (model/attention.py)": ["pgolf/model/attention.py"],
    "the rest of the model (gpt, layers, config, lora, schedule)": [
        "pgolf/model/gpt.py",
        "pgolf/model/layers.py",
        "pgolf/model/config.py",
        "pgolf/model/lora.py",
        "pgolf/model/schedule.py",
    ],  # fmt: skip
    "Triton kernels (kernels/)": ["pgolf/kernels/_triton.py", "pgolf/kernels/softcap_ce.py", "pgolf/kernels/mlp.py"],
    "training loop, loader, step, checkpoints (train/)": "pgolf/train/",
    "optimizers (Muon, EMA/SWA, schedules: optim/)": "pgolf/optim/",
    "scoring (score/)": "pgolf/score/",
    "evaluation modes and TTT (eval/ but the audits)": "pgolf/eval/",
    "the audits (eval/audit.py, eval/ngram_audit.py)": ["pgolf/eval/audit.py", "pgolf/eval/ngram_audit.py"],
    "GPTQ, LQER, Hessians, formats (quant/)": "pgolf/quant/",
    "per-group compression and codecs (compress/)": "pgolf/compress/",
    "data: shards, tokenizer, provenance, fingerprint (data/)": "pgolf/data/",
    "the stage scripts and the program's entry (stages/)": "stages/",
    "mechanics: cli, lifeline, dist, runcard, files, artifacts, tensorio": [
        "pgolf/cli.py",
        "pgolf/lifeline.py",
        "pgolf/dist.py",
        "pgolf/runcard.py",
        "pgolf/files.py",
        "pgolf/artifacts.py",
        "pgolf/tensorio.py",
    ],  # fmt: skip
    "typed configuration (config.py, params.py)": ["pgolf/config.py", "pgolf/params.py"],
}


def _names_kept(source: str) -> str:
    """The minifier with function locals kept (the ``whole`` and ``selected`` rows)."""
    import python_minifier

    return python_minifier.minify(source, remove_annotations=False, remove_pass=False,
                                  remove_literal_statements=True, combine_imports=True, hoist_literals=False,
                                  rename_locals=False, rename_globals=False, remove_object_base=False,
                                  convert_posargs_to_args=False, preserve_shebang=False, remove_asserts=False,
                                  remove_debug=False, remove_explicit_return_none=False)  # fmt: skip


def program_bytes(params: dict, files: list[str], text: str, rename: bool = True) -> int:
    cfg = bundle.BundleConfig.model_validate({**params["bundle"], "text": text, "minify": True})
    packaged = bundle.packaged_params(params)
    with mock.patch.object(bundle, "_minify", bundle._minify if rename else _names_kept):
        return len(bundle.build(ROOT, cfg, files, then=bundle.entry_point(packaged)).encode("latin-1"))


def levers(path: str) -> dict[str, int]:
    params = read_params(ROOT / path)
    selected = bundle.bundle_files(ROOT, bundle.packaged_params(params))
    return {
        "whole": program_bytes(params, bundle.bundle_files(ROOT), "base85", rename=False),
        "selected": program_bytes(params, selected, "base85", rename=False),
        "locals renamed": program_bytes(params, selected, "base85"),
        "latin1": program_bytes(params, selected, "latin1"),
    }


def parts(path: str) -> list[tuple[str, int, int]]:
    """(part, files in the program, bytes saved by leaving them out), base85, the shipped minification."""
    params = read_params(ROOT / path)
    files = bundle.bundle_files(ROOT, bundle.packaged_params(params))
    total = program_bytes(params, files, "base85")
    rows = []
    for name, spec in PARTS.items():
        if isinstance(spec, str):
            picked = [f for f in files if f.startswith(spec)]
            if spec == "pgolf/eval/":
                picked = [f for f in picked if f not in PARTS["the audits (eval/audit.py, eval/ngram_audit.py)"]]
        else:
            picked = [f for f in spec if f in files]
        rest = [f for f in files if f not in picked]
        rows.append((name, len(picked), total - program_bytes(params, rest, "base85")))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", help="a params file whose program's parts to cost")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    today = datetime.date.today().isoformat()
    lines = [f"## {today} counted code: train_gpt.py lever by lever (bytes; python bench/code_bytes.py)", "",
             "| params | whole | selected | + locals renamed, annotations dropped (shipped) | latin1 |",
             "|---|---|---|---|---|"]  # fmt: skip
    for path in PARAMS:
        row = levers(path)
        lines.append(f"| {path} | " + " | ".join(f"{v:,}" for v in row.values()) + " |")
    if args.parts:
        lines += ["", f"What each part of {args.parts}'s program costs (bytes saved by leaving it out, base85):", "",
                  "| part | files | bytes |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {name} | {n} | {b:,} |" for name, n, b in parts(args.parts)]
    publish([*lines, ""], args.results)


if __name__ == "__main__":
    main()
