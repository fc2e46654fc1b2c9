"""``torch.compile`` for training (and the helpers evaluation shares): the model as one graph per (cu_seqlens
bucket, recurrence schedule), the warm-up that builds those graphs before the clock starts, and a count of graphs
so that a recompilation during training is reported rather than silently slowing steps down.

Static shapes (``dynamic=False``): a packed row always has ``train.micro_batch_tokens`` tokens and its
``cu_seqlens`` is padded to a multiple of 64 entries (:func:`pgolf.segments.build_cu_seqlens`), so the shapes
that reach the graph are the row and a few cu lengths. ``looped`` is a Python bool, so switching recurrence on is a
guard miss: one more graph per bucket, built during the warm-up (unlooped, then looped) as in the record, not at
the switch. The attention bound ``max_seqlen`` is ``train.seq_len`` (segments are cut there), which
lets the flash backends trace without a host sync (see :mod:`pgolf.model.attention`). It is a Python int, so a
``train.seq_schedule`` gives one more graph per (stage seq_len, schedule, bucket), all built in the warm-up too.

The model compiles with ``fullgraph=True`` like the record. If some op cannot be traced (FlexAttention's
block-mask construction, or a kernel this PyTorch cannot trace), the first call warns with the reason and the
model compiles with graph breaks instead.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from pgolf.errors import PgolfError
from pgolf.model.attention import prepare_compile, set_max_seqlen
from pgolf.segments import CU_PAD_MULTIPLE, build_cu_seqlens

BACKEND = "inductor"
"""The backend of every compiled function (tests use ``aot_eager`` on CPU)."""

BUCKET_LENGTHS = (64, 128, 192, 256)
"""cu_seqlens lengths compiled during the warm-up (the record's: batches of up to 255 segments never recompile)."""


def enabled(compile_flag: bool, device: torch.device) -> bool:
    """Whether training compiles: ``train.compile`` on a CUDA device (compiling on CPU costs more than it saves)."""
    return compile_flag and device.type == "cuda"


def graphs_compiled() -> int:
    """Graphs Dynamo has built in this process so far (all functions together)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


RECOMPILE_HEADROOM = 4
"""Graphs per schedule allowed beyond the warmed-up buckets (a batch with more segments than the largest bucket
holds compiles one more, with a warning) before training stops with :class:`CompileLimitHit`."""


class CompileLimitHit(PgolfError):
    """The model needed more graphs than Dynamo's recompile limit allows (``fullgraph=True`` cannot fall back)."""


def recompile_limit(buckets: tuple[int, ...], schedules: int = 2) -> int:
    """The recompile limit for a model compiled per (cu_seqlens bucket, schedule): every warmed-up pair plus
    :data:`RECOMPILE_HEADROOM` more per schedule. Dynamo's default (8) is exactly 4 buckets x 2 schedules, so the
    first unseen bucket would kill the rank that met it."""
    return schedules * (len(buckets) + RECOMPILE_HEADROOM)


def raise_recompile_limit(limit: int) -> None:
    """Raise Dynamo's per-function recompile limit (and the accumulated one) to at least ``limit``; never lowers
    them (Muon's Newton–Schulz sizes them too)."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, limit)


class CompiledModel:
    """``model(...)`` through ``torch.compile(fullgraph=True)`` (static shapes, or ``dynamic`` ones), falling back
    once, with a warning, to a compile with graph breaks when the full graph cannot be traced; ``fullgraph`` and
    ``break_reason`` say which happened (the stages write them into their metrics)."""

    def __init__(self, model: nn.Module, backend: str | Callable | None = None, dynamic: bool = False) -> None:
        prepare_compile()
        self.model, self.backend, self.dynamic = model, backend or BACKEND, dynamic
        self.fullgraph, self.break_reason = True, ""
        self._fn = torch.compile(model, dynamic=dynamic, fullgraph=True, backend=self.backend)

    def __call__(self, *args, **kwargs) -> Tensor:
        try:
            return self._call(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit as err:
            limit = torch._dynamo.config.recompile_limit
            raise CompileLimitHit(
                f"torch.compile: the model needed more than {limit} graphs (the recompile limit): batches brought "
                f"cu_seqlens lengths the warm-up did not build; add them to pgolf.compiler.BUCKET_LENGTHS "
                f"(now {BUCKET_LENGTHS}) or set train.compile: false"
            ) from err

    def _call(self, *args, **kwargs) -> Tensor:
        if not self.fullgraph:
            return self._fn(*args, **kwargs)
        try:
            return self._fn(*args, **kwargs)
        except torch._dynamo.exc.Unsupported as err:  # raised while tracing, before anything ran
            reason = str(err).strip().splitlines()[0]
            warnings.warn(f"torch.compile: the model is not one graph ({reason}); compiling with graph breaks, "
                          "which costs speed", stacklevel=2)  # fmt: skip
            torch._dynamo.reset()
            self.fullgraph, self.break_reason = False, reason
            self._fn = torch.compile(self.model, dynamic=self.dynamic, backend=self.backend)
            return self._fn(*args, **kwargs)


def graph_report(forward: object) -> dict:
    """What a stage's metrics say of its compiled model: ``fullgraph`` (None when ``forward`` is not compiled)
    and, when it fell back to graph breaks, the first one (``graph_break``)."""
    if not isinstance(forward, CompiledModel):
        return {"fullgraph": None}
    return {"fullgraph": forward.fullgraph} | ({} if forward.fullgraph else {"graph_break": forward.break_reason})


def compile_model(
    model: nn.Module,
    seq_len: int,
    backend: str | Callable | None = None,
    buckets: tuple[int, ...] = BUCKET_LENGTHS,
    num_seq_lens: int = 1,
) -> CompiledModel:
    """Bound every attention layer's segments by ``seq_len`` (static ``max_seqlen``), size the recompile limit for
    ``buckets`` x 2 schedules x ``num_seq_lens`` segment caps (:func:`recompile_limit`), then compile ``model``."""
    set_max_seqlen(model, seq_len)
    raise_recompile_limit(recompile_limit(buckets, schedules=2 * num_seq_lens))
    return CompiledModel(model, backend)


def bucket_cu_seqlens(tokens: int, seq_len: int, length: int, device: torch.device) -> Tensor:
    """A ``cu_seqlens`` of ``length`` entries for a row of ``tokens``: segment starts every ``seq_len`` tokens (at
    most ``length - 1`` of them), through the loader's own padding."""
    starts = np.arange(0, tokens, max(1, seq_len))[: length - 1]
    return build_cu_seqlens(starts, tokens, 0, length).to(device)


def bucket_warmup(
    forward: Callable[..., Tensor],
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    seq_len: int,
    autocast: Callable[[], object],
    buckets: tuple[int, ...] | None = None,
    schedules: tuple[bool, ...] = (False, True),
) -> int:
    """Forward and backward (no optimizer step) of one real row with every cu_seqlens bucket, for each recurrence
    schedule in ``schedules`` (unlooped then looped), so that training never compiles; returns the graphs built.
    Gradients are cleared afterwards. ``buckets``: the cu_seqlens lengths (default :data:`BUCKET_LENGTHS`); a
    bucket too short for a row cut every ``seq_len`` tokens is never met and is skipped."""
    before = graphs_compiled()
    tokens = inputs.numel()
    fewest = -(-tokens // max(1, seq_len)) + 1  # boundaries of a row without BOS: cut every seq_len tokens
    for looped in schedules:
        for length in buckets or BUCKET_LENGTHS:
            # a row of n tokens has at most n + 1 boundaries, and at least ``fewest``
            if length - CU_PAD_MULTIPLE >= tokens + 1 or length < fewest:
                continue
            cu = bucket_cu_seqlens(tokens, seq_len, length, inputs.device)
            with autocast():
                loss = forward(inputs, targets, cu_seqlens=cu, looped=looped)
            loss.backward()
    for p in model.parameters():
        p.grad = None
    return graphs_compiled() - before
