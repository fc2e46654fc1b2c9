"""The train stage from configs to files: checks against the tokenizer, the run, its outputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pgolf import dist
from pgolf import tokenizer as tok
from pgolf.data import shards
from pgolf.data.provenance import check_training_documents
from pgolf.eval.bpb import load_val
from pgolf.eval.score import ScoreConfig, document_set, scored_documents
from pgolf.model.config import ModelConfig, ModelParams
from pgolf.train.config import TrainConfig
from pgolf.train.loop import Validation, setup, train, write_outputs


@dataclass(frozen=True)
class TrainPaths:
    shards: Path
    tokenizer: Path
    out: Path
    resume: Path
    live: Path


def resolve_model(params: ModelParams, tokenizer_dir: Path) -> ModelConfig:
    """The model configuration with the tokenizer's vocabulary size and BOS id."""
    meta = tok.read_meta(tokenizer_dir)
    return params.resolve(vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])


def run_train(params: ModelParams, cfg: TrainConfig, score: ScoreConfig, paths: TrainPaths) -> dict:
    """Check that no training document is a validation document, train, write raw + averaged weights and
    meta.json; a finished run removes its resume checkpoint. Returns the summary (metrics/train.json)."""
    model_cfg = resolve_model(params, paths.tokenizer)
    provenance = check_training_documents(paths.shards, shards.shard_paths(paths.shards, "train"), model_cfg.bos_id,
                                          what="train", progress=dist.dist_info().is_main)  # fmt: skip
    info = dist.init()
    try:
        manifest = json.loads((paths.shards / "manifest.json").read_text())
        run = setup(model_cfg, cfg, paths.shards, manifest, info)
        val_data = load_val(paths.shards, paths.tokenizer)
        val = Validation(val_data, scored_documents(val_data, score, model_cfg.bos_id), score)
        summary = train(run, val=val, resume_dir=paths.resume, live_dir=paths.live)
        summary.update(hardware=info.hardware, provenance=provenance,
                       final_val_documents=document_set(val_data, val.docs))  # fmt: skip
        write_outputs(run, paths.out, summary)
        if info.is_main:
            shutil.rmtree(paths.resume, ignore_errors=True)
    finally:
        dist.shutdown()
    return summary
