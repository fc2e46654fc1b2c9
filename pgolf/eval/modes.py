"""One entry point for every enabled evaluation mode (:func:`run_modes`), each on its own copy of the model.

The modes score the same documents (the first ``eval.max_docs`` val documents), so their figures compare.
Test-time training adapts a deep copy per mode, never the caller's model, so nothing leaks between modes.
With ``eval.compile`` on CUDA each mode compiles its scoring/TTT forward and warms it up on random tokens, never
validation data (B9.9), before its timer starts (:mod:`pgolf.eval.compile`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn

from pgolf.dist import group_rank_world
from pgolf.eval.bpb import ValData
from pgolf.eval.common import ModeResult, TokenRecorder, model_device
from pgolf.eval.compile import backend_for
from pgolf.eval.config import EvalConfig
from pgolf.eval.documents import Document, split_documents
from pgolf.eval.sliding import evaluate_sliding
from pgolf.eval.ttt_chunk import evaluate_chunk_sgd
from pgolf.eval.ttt_global import evaluate_multi_phase
from pgolf.eval.ttt_lora import evaluate_lora_ttt

MODES = ("plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase")
Runner = Callable[..., ModeResult]


def _plain(model: nn.Module, val: ValData, docs: list[Document], cfg: EvalConfig, **kw) -> ModeResult:
    c = cfg.plain
    return evaluate_sliding(model, val, docs, seq_len=c.seq_len, stride=c.seq_len, batch_windows=c.batch_windows,
                            name="plain", **kw)  # fmt: skip


def _sliding(model: nn.Module, val: ValData, docs: list[Document], cfg: EvalConfig, **kw) -> ModeResult:
    c = cfg.sliding
    return evaluate_sliding(model, val, docs, seq_len=c.seq_len, stride=c.stride, batch_windows=c.batch_windows,
                            name="sliding", **kw)  # fmt: skip


RUNNERS: dict[str, Runner] = {
    "plain": _plain,
    "sliding": _sliding,
    "lora_ttt": lambda model, val, docs, cfg, **kw: evaluate_lora_ttt(model, val, docs, cfg.lora_ttt, **kw),
    "chunk_sgd": lambda model, val, docs, cfg, **kw: evaluate_chunk_sgd(model, val, docs, cfg.chunk_sgd, **kw),
    "multi_phase": lambda model, val, docs, cfg, **kw: evaluate_multi_phase(model, val, docs, cfg.multi_phase, **kw),
}


def scored_documents(val: ValData, cfg: EvalConfig, bos_id: int) -> list[Document]:
    """The documents every mode scores: the first ``eval.max_docs`` (0 = all)."""
    return split_documents(val.tokens, bos_id, cfg.max_docs)


def enabled_modes(cfg: EvalConfig) -> list[str]:
    return [name for name in MODES if getattr(cfg, name).enabled]


def run_mode(
    name: str, model: nn.Module, val: ValData, cfg: EvalConfig, looped: bool, recorder: TokenRecorder | None = None
) -> ModeResult:
    """Run one mode on a deep copy of ``model`` (the caller's model is never changed), compiled when
    ``cfg.compile`` and the model is on CUDA."""
    if name not in RUNNERS:
        raise ValueError(f"unknown evaluation mode {name!r}; expected one of {', '.join(MODES)}")
    rank, world_size = group_rank_world()
    docs = scored_documents(val, cfg, model.cfg.bos_id)
    backend = backend_for(cfg.compile, model_device(model))
    return RUNNERS[name](copy.deepcopy(model), val, docs, cfg, looped=looped, rank=rank, world_size=world_size,
                         recorder=recorder, progress=cfg.progress, compile_backend=backend)  # fmt: skip


def run_modes(model: nn.Module, val: ValData, cfg: EvalConfig, looped: bool) -> dict[str, ModeResult]:
    """Every enabled mode, in the order of :data:`MODES`, each on a fresh copy of ``model``."""
    return {name: run_mode(name, model, val, cfg, looped) for name in enabled_modes(cfg)}
