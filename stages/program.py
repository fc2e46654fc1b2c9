"""The submission program: from the challenge's folder layout to a scored ``model.bin``, every stage in one process.

A records folder's ``train_gpt.py`` (written by :mod:`pgolf.report.package`) holds the code bundle, the run's params
and a call of :func:`main`. Started inside the folder (``python train_gpt.py``), it writes the package's sources
back, then runs what ``dvc repro`` runs from the tokenizer on, each stage as its script runs it, in this process:

1. adopt the challenge's files as a ``fineweb_cached`` source: ``./data/datasets/<data.variant>/fineweb_{train,
   val,val_bytes}_*.bin`` and the one ``./data/tokenizers/*.model`` (or ``--data-path``, ``--tokenizer-path``);
2. tokenizer, tokenize (the shards' checks, the provenance check, the data fingerprint), train, export,
   calibrate, quantize, compress, evaluate, writing ``artifacts/`` and ``metrics/`` as the pipeline does;
3. ``final_model.bin`` (the records' name for the artifact) and the lines the records' logs carry:
   ``val_tokens``, ``Code size``, ``Total submission size``, the reported ``val_bpb`` and each phase's seconds, on
   stdout and in ``train.log``.

The counted code is ``train_gpt.py`` itself (the bundle stage writes it: ``artifacts/submission/train_gpt.py``).
Under ``torchrun --standalone --nproc_per_node=N train_gpt.py`` the ranks hold one process group for the whole
job: train, calibrate and evaluate run on every rank (as ``dvc.yaml`` launches them), the other stages on rank 0
alone (:func:`pgolf.dist.alone`) while the others wait at a barrier (``train.dist_timeout_seconds``).
``--seed`` sets ``train.seed`` (the records' seeds: ``train_gpt.py --seed 1338``).
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import time
from pathlib import Path

import yaml

from pgolf import dist
from pgolf.cli import Parser
from pgolf.data import docs
from pgolf.data.sources import CACHED_TOKENIZER_FILE, link_or_copy, link_shards
from pgolf.errors import PgolfError
from pgolf.eval.reported import reported_mode
from pgolf.files import fresh_dir

LOG = "train.log"
FINAL_MODEL = "final_model.bin"
"""The artifact under the records' name (``final_model.*``), beside the program: ``artifacts/submission/model.bin``
linked (or copied)."""
STAGES = ("tokenizer", "tokenize", "train", "export", "calibrate", "quantize", "compress", "evaluate")
"""What runs, in order: the stages of ``dvc.yaml`` after ``prepare`` (replaced by :func:`adopt`), before the
report stages."""
EVERY_RANK = ("train", "calibrate", "evaluate")
"""The stages that run on every rank under torchrun; the others run on rank 0 alone."""
_CHALLENGE_SHARD = re.compile(r"^fineweb_(train|val|val_bytes)_(\d{6})\.bin$")


def challenge_files(variant: str, data_path: str | None, tokenizer_path: str | None) -> tuple[Path, Path]:
    """(the shard folder, the tokenizer model): the challenge's layout unless given."""
    data = Path(data_path or f"data/datasets/{variant}")
    if tokenizer_path:
        return data, Path(tokenizer_path)
    models = sorted(Path("data/tokenizers").glob("*.model"))
    if len(models) != 1:
        raise PgolfError(f"data/tokenizers: {len(models)} *.model files, need one; give --tokenizer-path")
    return data, models[0]


def adopt(data: Path, tokenizer: Path, params: dict, out: Path = Path("data/docs")) -> dict:
    """Link the challenge's shards and tokenizer into ``out`` as a ``fineweb_cached`` source folder and write its
    manifest (what the prepare stage writes for the published shards); returns the manifest."""
    found = [(m.group(1), int(m.group(2)), p) for p in sorted(data.glob("fineweb_*.bin"))
             if (m := _CHALLENGE_SHARD.match(p.name))]  # fmt: skip
    kinds = {kind for kind, _, _ in found}
    if not {"train", "val"} <= kinds:
        raise PgolfError(f"{data}: needs fineweb_train_*.bin and fineweb_val_*.bin shards (found {sorted(kinds)})")
    if not tokenizer.is_file():
        raise PgolfError(f"{tokenizer}: no tokenizer model; give --tokenizer-path")
    counts = link_shards(found, fresh_dir(out))
    link_or_copy(tokenizer, out / CACHED_TOKENIZER_FILE)
    model = {"name": tokenizer.name, "file": CACHED_TOKENIZER_FILE}
    manifest = {"source": "fineweb_cached", "repo": "local", "variant": params["data"]["variant"],
                "dataset": str(data), "tokenizer": model, "caseops": params["tokenizer"]["caseops"],
                "tokens": counts}  # fmt: skip
    docs.write_manifest(out, manifest)
    return manifest


def run_stage(name: str) -> float:
    """One stage's ``main`` with its default paths and ``params.yaml``, as DVC runs it (on every rank, or on rank
    0 alone: :data:`EVERY_RANK`); returns its seconds once every rank is through."""
    module = importlib.import_module(f"stages.{name}")
    argv, sys.argv = sys.argv, [f"stages/{name}.py"]
    start = time.perf_counter()
    try:
        if name in EVERY_RANK:
            module.main()
        elif dist.dist_info().is_main:
            with dist.alone():
                module.main()
    finally:
        sys.argv = argv
    dist.barrier()
    return time.perf_counter() - start


def log_lines(seconds: dict[str, float]) -> list[str]:
    """The records' log lines, from what the stages wrote."""
    manifest = json.loads(Path("data/shards/manifest.json").read_text())
    modes = json.loads(Path("metrics/eval.json").read_text())["modes"]
    reported = reported_mode(list(modes))
    code = Path(sys.argv[0]).stat().st_size  # the file that runs: train_gpt.py, the counted code
    model = Path("artifacts/submission/model.bin").stat().st_size
    score = modes[reported]
    lines = [f"train_shards: {manifest['fingerprint']['train_shards']}",
             f"val_tokens: {manifest['fingerprint']['val_targets']}",
             f"Code size: {code} bytes", f"Serialized model: {model} bytes",
             f"Total submission size: {code + model} bytes",
             *(f"{name}_time: {s:.1f}s" for name, s in seconds.items()),
             f"final {reported} val_loss:{score['val_loss']:.8f} val_bpb:{score['val_bpb']:.8f}"]  # fmt: skip
    return lines


def main(params_text: str, argv: list[str] | None = None) -> None:
    """Write ``params.yaml``, adopt the challenge's files, run the stages, print and log the records' lines."""
    parser = Parser(description="The submission program: the challenge's files to a scored model.bin.")
    parser.add_argument("--data-path", help="the shard folder (default: ./data/datasets/<data.variant>)")
    parser.add_argument("--tokenizer-path", help="the tokenizer model (default: the one ./data/tokenizers/*.model)")
    parser.add_argument("--seed", type=int, help="train.seed (default: the packaged run's)")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    params = yaml.safe_load(params_text)
    if args.seed is not None:
        params["train"]["seed"] = args.seed
    info = dist.init(params["train"]["dist_timeout_seconds"])  # one group for the job, held across the stages
    try:
        if info.is_main:
            Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
            adopt(*challenge_files(params["data"]["variant"], args.data_path, args.tokenizer_path), params)
        dist.barrier()
        seconds = {name: run_stage(name) for name in STAGES}
    finally:
        dist.shutdown()
    if info.is_main:
        Path(FINAL_MODEL).unlink(missing_ok=True)
        link_or_copy(Path("artifacts/submission/model.bin"), Path(FINAL_MODEL))
        lines = [f"seed: {params['train']['seed']}", f"world_size: {info.world_size}", *log_lines(seconds)]
        Path(LOG).write_text("\n".join(lines) + "\n", encoding="utf-8")
        print("\n".join(lines))
