"""Stage train: the record's training run (wall-clock budget, Muon + AdamW, recurrence, EMA/SWA) ->
artifacts/train/{raw,<averaging>}.safetensors + meta.json; metrics/train.json; dvclive curves in metrics/train/.

Launched plainly (``python -m stages.train``) or with ``torchrun ... -m stages.train`` (``train.launcher``). A
killed run resumes from artifacts/.resume/train (written every ``train.checkpoint_seconds``). Before training, every
training document is checked against the validation documents' hashes.
"""

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf import dist, tensorio
from pgolf.artifacts import META_FILE, RAW_FILE, averaged_file, stored_config
from pgolf.cli import parse_paths, run
from pgolf.data import shards
from pgolf.data import tokenizer as tok
from pgolf.data.provenance import recorded_check
from pgolf.files import write_json
from pgolf.model.config import ModelConfig, ModelParams
from pgolf.params import load_section
from pgolf.runcard import run_card, take_lease
from pgolf.score.scorer import Ladder, ScoreConfig
from pgolf.train import loop
from pgolf.train.config import TrainConfig


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    shards: Path = Path("data/shards")
    tokenizer: Path = Path("artifacts/tokenizer")
    out: Path = Path("artifacts/train")
    resume: Path = Path("artifacts/.resume/train")
    live: Path = Path("metrics/train")
    metrics: Path = Path("metrics/train.json")


REPRODUCIBLE = ("steps", "tokens", "looping_from_step", "final_train_loss", "resumed", "world_size", "grad_accum",
                "averaging", "compiled")  # fmt: skip
"""The summary fields kept with the weights: what the run did, never how long it took, where or at which commit, so
the same seed gives the same bytes in ``artifacts/train/`` and DVC skips every later stage (the rest:
``metrics/train.json``)."""


def resolve_model(params: ModelParams, tokenizer_dir: Path) -> ModelConfig:
    """The model configuration with the tokenizer's vocabulary size and BOS id."""
    meta = tok.read_meta(tokenizer_dir)
    return params.resolve(vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])


def write_weights(run: loop.Run, out_dir: Path, summary: dict) -> None:
    """raw.safetensors, <averaging>.safetensors and meta.json (the resolved model config and :data:`REPRODUCIBLE`)."""
    kept = {k: summary[k] for k in REPRODUCIBLE if k in summary}
    meta = {"model_config": stored_config(run.model.cfg, run.cfg.dtype_policy), **kept}
    tensorio.save_tensors(out_dir / RAW_FILE, run.model.state_dict(), meta)
    tensorio.save_tensors(out_dir / averaged_file(run.cfg.averaging.kind), run.averager.state_dict(), meta)
    write_json(out_dir / META_FILE, meta)


def train(params: ModelParams, cfg: TrainConfig, score: ScoreConfig, paths: Paths) -> dict:
    """Check that no training document is a validation document, train, write raw + averaged weights, meta.json
    and metrics/train.json; a finished run removes its resume checkpoint. Returns the summary."""
    started = time.perf_counter()
    model_cfg = resolve_model(params, paths.tokenizer)
    manifest = shards.read_manifest(paths.shards)
    provenance = recorded_check(paths.shards, manifest, what="train")
    info = dist.init(cfg.dist_timeout_seconds)
    try:
        run_ = loop.setup(model_cfg, cfg, paths.shards, manifest, info)
        ladder = Ladder.load(score, paths.shards, paths.tokenizer, model_cfg.bos_id)
        summary = loop.train(run_, val=ladder, resume_dir=paths.resume, live_dir=paths.live)
        card = run_card(started, info)
        summary.update(hardware=info.hardware, provenance=provenance, final_val_documents=ladder.documents,
                       data_fingerprint=manifest.get("fingerprint"), commit=card["commit"], run=card)  # fmt: skip
        if info.is_main:
            write_weights(run_, paths.out, summary)
            write_json(paths.metrics, summary)
            shutil.rmtree(paths.resume, ignore_errors=True)
    finally:
        dist.shutdown()
    return summary


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    take_lease(1)  # a device of a shared box (PGOLF_LEASE_DIR), before anything touches CUDA
    summary = train(load_section("model", paths.params), load_section("train", paths.params),
                    load_section("score", paths.params), paths)  # fmt: skip
    dist.print0(f"train: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['train_seconds']:.1f}s "
                f"(+{summary['warmup_seconds']:.1f}s warm-up), final loss {summary['final_train_loss']:.4f}, "
                f"val_bpb {summary['final_val']['val_bpb']:.4f} -> {paths.out}")  # fmt: skip


if __name__ == "__main__":
    run(main)
