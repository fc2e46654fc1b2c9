"""The evaluation modes, one registry (:data:`MODES`), one signature, and the ``eval`` section that selects them.

Every mode is a function ``(model, val, docs, cfg, ctx) -> ModeResult``: the model to score (adapted in place by a
TTT mode: :func:`run_mode` hands it a deep copy), the validation data, the documents (the ``score`` section's, so
the figures compare with each other and with every rung of the ladder), the mode's own config section, and the
:class:`~pgolf.score.scores.EvalContext` (schedule, rank, recorder, progress, compile backend). ``plain`` is
:func:`pgolf.score.scorer.score_model` itself, configured by the ``score`` section and always run (it is the
``model.bin`` rung); the others run when enabled. With ``eval.compile`` on CUDA each mode compiles its scoring/TTT
forward and warms it up on random tokens, never validation data, before its timer starts
(:mod:`pgolf.score.compile`).

A new mode: its function in a module of this package, its config section in :mod:`pgolf.eval.config` (one field
in its ``EvalConfig``, its keys in params.yaml and the presets), one line in :data:`MODES` and one switch in
``pgolf.compress.bundle.SWITCHES``.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from pgolf.config import Section
from pgolf.eval.config import EvalConfig
from pgolf.score.bpb import ValData
from pgolf.score.compile import backend_for
from pgolf.score.documents import Document
from pgolf.score.scorer import ScoreConfig
from pgolf.score.scores import EvalContext, ModeResult, TokenRecorder, eval_context, model_device

ModeFn = Callable[[nn.Module, ValData, list[Document], Any, EvalContext], ModeResult]


@dataclass(frozen=True)
class Mode:
    """An evaluation mode: the function that runs it (``module:function``, imported when the mode runs: the
    submission program carries only the modes its params turn on), and whether it adapts the model while scoring
    (test-time training: it gets the score-first audit)."""

    function: str
    ttt: bool

    @property
    def run(self) -> ModeFn:
        module, name = self.function.split(":")
        return getattr(importlib.import_module(module), name)


MODES: dict[str, Mode] = {
    "plain": Mode("pgolf.score.scorer:score_model", ttt=False),
    "sliding": Mode("pgolf.eval.sliding:evaluate_sliding", ttt=False),
    "lora_ttt": Mode("pgolf.eval.lora_ttt:evaluate_lora_ttt", ttt=True),
    "chunk_sgd": Mode("pgolf.eval.chunk_sgd:evaluate_chunk_sgd", ttt=True),
    "multi_phase": Mode("pgolf.eval.multi_phase:evaluate_multi_phase", ttt=True),
}
"""Every mode by name, in the order the evaluate stage runs them."""


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
