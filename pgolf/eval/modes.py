"""The evaluation modes, one registry (:data:`MODES`), one signature, and the ``eval`` section that selects them.

Every mode is a function ``(model, val, docs, cfg, ctx) -> ModeResult``: the model to score (adapted in place by a
TTT mode: :func:`run_mode` hands it a deep copy), the validation data, the documents (the ``score`` section's, so
the figures compare with each other and with every rung of the ladder), the mode's own config section, and the
:class:`~pgolf.score.scores.EvalContext` (schedule, rank, recorder, progress, compile backend). ``plain`` is
:func:`pgolf.score.scorer.score_model` itself, configured by the ``score`` section and always run (it is the
``model.bin`` rung); the others run when enabled. With ``eval.compile`` on CUDA each mode compiles its scoring/TTT
forward and warms it up on random tokens, never validation data, before its timer starts
(:mod:`pgolf.score.compile`).

A new mode: its function and its config section in a module of this package, one line in :data:`MODES`, one field
in :class:`EvalConfig` (and its keys in params.yaml and the presets).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import Field
from torch import nn

from pgolf.config import Section
from pgolf.eval.chunk_sgd import ChunkSgdConfig, evaluate_chunk_sgd
from pgolf.eval.lora_ttt import LoraTttConfig, evaluate_lora_ttt
from pgolf.eval.multi_phase import MultiPhaseConfig, evaluate_multi_phase
from pgolf.eval.sliding import SlidingConfig, evaluate_sliding
from pgolf.score.bpb import ValData
from pgolf.score.compile import backend_for
from pgolf.score.documents import Document
from pgolf.score.scorer import ScoreConfig, score_model
from pgolf.score.scores import EvalContext, ModeResult, TokenRecorder, eval_context, model_device


@dataclass(frozen=True)
class Mode:
    """An evaluation mode: the function that runs it, and whether it adapts the model while scoring (test-time
    training: it gets the score-first audit)."""

    run: Callable[[nn.Module, ValData, list[Document], Any, EvalContext], ModeResult]
    ttt: bool


MODES: dict[str, Mode] = {
    "plain": Mode(score_model, ttt=False),
    "sliding": Mode(evaluate_sliding, ttt=False),
    "lora_ttt": Mode(evaluate_lora_ttt, ttt=True),
    "chunk_sgd": Mode(evaluate_chunk_sgd, ttt=True),
    "multi_phase": Mode(evaluate_multi_phase, ttt=True),
}
"""Every mode by name, in the order the evaluate stage runs them."""


class AuditConfig(Section):
    """The stage's own audits (the bytes audit always runs when the val text is available)."""

    score_first: bool  # perturbation audit of every TTT mode
    docs: int = Field(ge=1)  # documents of the audit runs (the first ones)


class EvalConfig(Section):
    """params.yaml ``eval``: the modes beyond the plain score (which is the ``score`` section's), all on the
    ``score`` section's documents, and the stage's audits."""

    progress: bool  # tqdm bars on rank 0
    compile: bool  # record: true. torch.compile the scoring/TTT forward, warmed up before the timer (CUDA only)
    sliding: SlidingConfig
    lora_ttt: LoraTttConfig
    chunk_sgd: ChunkSgdConfig
    multi_phase: MultiPhaseConfig
    audit: AuditConfig


def mode_config(name: str, score: ScoreConfig, cfg: EvalConfig) -> Section:
    """The config section of mode ``name``: ``score`` for plain, else ``eval.<name>``."""
    return score if name == "plain" else getattr(cfg, name)


def enabled_modes(cfg: EvalConfig) -> list[str]:
    """``plain`` and every enabled mode, in the order of :data:`MODES`."""
    return [name for name in MODES if name == "plain" or getattr(cfg, name).enabled]


def context(model: nn.Module, cfg: EvalConfig, looped: bool, recorder: TokenRecorder | None = None) -> EvalContext:
    """The context of an evaluation of ``model`` in this process: rank, compile backend, progress."""
    backend = backend_for(cfg.compile, model_device(model))
    return eval_context(looped, progress=cfg.progress, compile_backend=backend, recorder=recorder)


def run_mode(
    name: str, model: nn.Module, val: ValData, docs: list[Document], score: ScoreConfig, cfg: EvalConfig,
    ctx: EvalContext,
) -> ModeResult:  # fmt: skip
    """Run one mode on a deep copy of ``model`` (the caller's model is never changed)."""
    if name not in MODES:
        raise ValueError(f"unknown evaluation mode {name!r}; expected one of {', '.join(MODES)}")
    return MODES[name].run(copy.deepcopy(model), val, docs, mode_config(name, score, cfg), ctx)
