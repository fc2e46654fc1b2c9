"""The train stage from configs to files: checks against the tokenizer, the run, its outputs."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from pgolf import dist
from pgolf import tokenizer as tok
from pgolf.eval.bpb import ValData, load_val
from pgolf.model.config import ModelConfig, ModelParams
from pgolf.train.config import TrainConfig
from pgolf.train.loop import setup, train, write_outputs


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


def val_subset(val: ValData, max_tokens: int) -> ValData:
    """The first ``max_tokens`` targets of the val stream (all when 0)."""
    if not max_tokens or max_tokens + 1 >= len(val.tokens):
        return val
    return ValData(val.tokens[: max_tokens + 1], val.target_bytes[: max_tokens + 1], val.byte_count)


def run_train(params: ModelParams, cfg: TrainConfig, paths: TrainPaths) -> dict:
    """Train, write raw + averaged weights and meta.json; a finished run removes its resume checkpoint."""
    model_cfg = resolve_model(params, paths.tokenizer)
    info = dist.init()
    try:
        manifest = json.loads((paths.shards / "manifest.json").read_text())
        run = setup(model_cfg, cfg, paths.shards, manifest, info)
        val = val_subset(load_val(paths.shards, paths.tokenizer), cfg.val_max_tokens) if cfg.val_every else None
        summary = train(run, val=val, resume_dir=paths.resume, live_dir=paths.live)
        write_outputs(run, paths.out, summary)
        if info.is_main:
            shutil.rmtree(paths.resume, ignore_errors=True)
    finally:
        dist.shutdown()
    return summary
