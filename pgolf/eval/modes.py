"""One entry point for every evaluation mode (:func:`run_mode`), each on its own copy of the model.

The modes score the same documents (the ``score`` section's, :func:`pgolf.eval.score.scored_documents`), so their
figures compare with each other and with every rung of the ladder. ``plain`` is :func:`pgolf.eval.score.score_model`
itself, always run (it is the ``model.bin`` rung); the others run when enabled. Test-time training adapts a deep
copy per mode, never the caller's model, so nothing leaks between modes. With ``eval.compile`` on CUDA each mode
compiles its scoring/TTT forward and warms it up on random tokens, never validation data (B9.9), before its timer
starts (:mod:`pgolf.eval.compile`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from pgolf.dist import group_rank_world
from pgolf.eval.bpb import ValData
from pgolf.eval.common import EvalContext, ModeResult, TokenRecorder, model_device
from pgolf.eval.compile import backend_for
from pgolf.eval.config import EvalConfig
from pgolf.eval.documents import Document
from pgolf.eval.score import ScoreConfig, score_model
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.ttt_chunk import evaluate_chunk_sgd
from pgolf.eval.ttt_global import evaluate_multi_phase
from pgolf.eval.ttt_lora import evaluate_lora_ttt

MODES = ("plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase")
TTT_MODES = ("lora_ttt", "chunk_sgd", "multi_phase")
Runner = Callable[[nn.Module, ValData, list[Document], ScoreConfig, EvalConfig, EvalContext], ModeResult]

RUNNERS: dict[str, Runner] = {
    "plain": lambda model, val, docs, score, cfg, ctx: score_model(model, val, docs, score, ctx),
    "sliding": lambda model, val, docs, score, cfg, ctx: evaluate_sliding(model, val, docs, cfg.sliding, ctx),
    "lora_ttt": lambda model, val, docs, score, cfg, ctx: evaluate_lora_ttt(model, val, docs, cfg.lora_ttt, ctx=ctx),
    "chunk_sgd": lambda model, val, docs, score, cfg, ctx: evaluate_chunk_sgd(model, val, docs, cfg.chunk_sgd, ctx=ctx),
    "multi_phase": lambda model, val, docs, score, cfg, ctx: evaluate_multi_phase(
        model, val, docs, cfg.multi_phase, ctx=ctx
    ),  # fmt: skip
}


def enabled_modes(cfg: EvalConfig) -> list[str]:
    """``plain`` and every enabled mode, in the order of :data:`MODES`."""
    return ["plain"] + [name for name in MODES[1:] if getattr(cfg, name).enabled]


def context(model: nn.Module, cfg: EvalConfig, looped: bool, recorder: TokenRecorder | None = None) -> EvalContext:
    """The context of an evaluation of ``model`` in this process: rank, compile backend, progress."""
    rank, world_size = group_rank_world()
    backend = backend_for(cfg.compile, model_device(model))
    return EvalContext(looped, rank, world_size, recorder, cfg.progress, backend)


def run_mode(
    name: str, model: nn.Module, val: ValData, docs: list[Document], score: ScoreConfig, cfg: EvalConfig,
    ctx: EvalContext,
) -> ModeResult:  # fmt: skip
    """Run one mode on a deep copy of ``model`` (the caller's model is never changed)."""
    if name not in RUNNERS:
        raise ValueError(f"unknown evaluation mode {name!r}; expected one of {', '.join(MODES)}")
    return RUNNERS[name](copy.deepcopy(model), val, docs, score, cfg, ctx)
