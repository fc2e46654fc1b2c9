"""The train stage on the toy model: its paths, the small train section, a run killed at a step, its weights."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgolf import tensorio
from pgolf.model.config import ModelParams
from pgolf.train import loop
from pgolf.train.config import TrainConfig
from stages.train import Paths as TrainPaths
from stages.train import train
from tests.helpers.config import model_cfg, score_cfg, train_cfg

SCORE = score_cfg(docs=6, seq_len=64, batch_windows=4)  # training validation and export score these documents


def paths(data, out: Path) -> TrainPaths:
    """The train stage's paths: the shards and tokenizer of ``data`` (the ``data`` fixture), outputs under ``out``."""
    return TrainPaths(shards=data / "shards", tokenizer=data / "tok", out=out / "train", resume=out / "resume",
                      live=out / "live", metrics=out / "train.json")  # fmt: skip


def tiny_model() -> ModelParams:
    """The toy architecture as params (the train stage resolves vocab and BOS from the tokenizer)."""
    return ModelParams.model_validate(model_cfg().model_dump(exclude={"vocab_size", "bos_id"}))


def weights(directory: Path, name: str = "raw") -> dict:
    return tensorio.load_tensors(directory / f"{name}.safetensors")[0]


def run_killed_at(step: int, cfg: TrainConfig, data, out: Path, monkeypatch) -> None:
    """A training run into ``out`` that dies (KeyboardInterrupt) when it reaches ``step``."""
    original = loop._step

    def dies(run, looped):
        if run.state.step == step:
            raise KeyboardInterrupt("killed")
        return original(run, looped)

    monkeypatch.setattr(loop, "_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), cfg, SCORE, paths(data, out))
    monkeypatch.setattr(loop, "_step", original)


def seq_run_cfg(**overrides):
    """6 steps of one 256-token micro-batch (frac = step / 6), each logged, no validation but the last."""
    return train_cfg(**{"iterations": 6, "global_batch_tokens": 256, "log_every": 1, "val_every": 0, **overrides})
