"""``torch.compile`` for evaluation (``eval.compile``): the per-token forward of every scoring and TTT call as one
graph per (rows, width) shape, a warm-up that builds those graphs on random tokens before the clock starts, and
a count of the graphs built afterwards (expected 0; a warning otherwise).

Static shapes (``dynamic=False``, ``fullgraph=True``, CUDA only, like ``train.compile``). A call runs a batch of
windows as ``[rows, width]`` rows, one window per row, padded at the end (no ``cu_seqlens``: a row never holds two
windows). What varies between calls is the width (the longest window of the batch: short documents, the first
chunks of a document, a sliding batch's tail) and the row count (a rank's last, smaller batch of windows; LoRA
TTT's one batch of fewer than ``batch_docs`` documents). Compiled, the width is rounded up to the next of
:func:`width_buckets` and a batch of windows is padded with empty rows to ``batch_windows``; LoRA TTT keeps its
row count (its short batch holds the longest documents, which padding to ``batch_docs`` rows would slow down
most), so that batch adds one graph per width it reaches. Pads trail the valid prefix of each row and empty rows
hold no window: causal attention and position-local ops keep every real position's logit, and pads are outside
the scored mask, so no scored number changes (tests/score/test_compile.py).

The warm-up runs each shape a mode will call (computed from its windows, never from their tokens) on random
token ids (validation tokens must not reach the warm-up), forward only for fixed
models and forward + backward through a throw-away LoRA for LoRA TTT, so that no compilation falls in the timed
part. The LoRA adapters (and LoRA TTT's AsymLogit caps, :class:`pgolf.eval.lora_ttt.AsymSoftcap`) are inputs of
the graph, not constants: one graph serves every document batch of a shape, and global SGD's updates of the caps
reach it (they require grad only inside global SGD, as in the warm-up they do not). The graphs are guarded on
the model's state (``eval()``, which parameters require grad, grad mode), not on its identity, so the modes'
model copies share them and a shape another mode built compiles nothing; the TTT weight updates (LoRA's AdamW,
global and chunk SGD, all eager) change values in place and keep them valid.

References: the record's compiled ``forward_ttt`` and its random-token
warm-up, outside the timer), :mod:`pgolf.compiler`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pgolf import compiler as tc
from pgolf.dist import autocast, to_device
from pgolf.model.layers import Adapters
from pgolf.score.bpb import ValData
from pgolf.score.documents import EMPTY_WINDOW, Rows, Window, gather

Backend = str | Callable | None
SMALLEST_WIDTH = 64
"""The narrowest width bucket (a record TTT chunk is 48 targets)."""


def width_buckets(max_width: int, smallest: int = SMALLEST_WIDTH) -> tuple[int, ...]:
    """Row widths compiled for windows of at most ``max_width`` tokens: 64, 96, 128, 192, 256, ... (powers of two
    and 1.5 times them, at most 1.5x the window: 11 graphs up to 2048 instead of 6 at up to 2x) below
    ``max_width``, then ``max_width`` itself."""
    widths, power = [], smallest
    while power < max_width:
        widths += [w for w in (power, power * 3 // 2) if w < max_width]
        power *= 2
    return (*widths, max_width)


def backend_for(compile_flag: bool, device: torch.device) -> str | None:
    """The backend evaluation compiles with: ``eval.compile`` on a CUDA device, else None (eager)."""
    return tc.BACKEND if tc.enabled(compile_flag, device) else None


def set_recompile_limit(graphs: int) -> None:
    """Let Dynamo build ``graphs`` more graphs of one function than this process has built so far (every eval
    mode's graphs hang on ``GPT.forward``)."""
    tc.raise_recompile_limit(tc.graphs_compiled() + graphs)


class EvalForward:
    """Per-token nats ``[rows, width]`` of padded window rows through ``model`` with the schedule ``looped``: eager
    at the batch's own shape (``backend`` None), or compiled at bucketed shapes. ``logit_cap``: an eval-time cap
    module the model applies instead of its fixed soft-cap (LoRA TTT's AsymLogit; a graph input when compiled)."""

    def __init__(
        self,
        model: nn.Module,
        looped: bool,
        backend: Backend,
        max_width: int,
        logit_cap: nn.Module | None = None,
        hints: bool = False,
    ) -> None:
        self.model, self.looped, self.logit_cap, self.hints = model, looped, logit_cap, hints
        self.extra = {} if logit_cap is None else {"logit_cap": logit_cap}  # a model need not know the keyword
        self.compiled = backend is not None
        self.buckets = width_buckets(max_width) if self.compiled else ()
        self.fn = tc.CompiledModel(model, backend) if self.compiled else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def shape(self, num_windows: int, width: int, rows: int = 0) -> tuple[int, int]:
        """(rows, width) a batch of ``num_windows`` windows of at most ``width`` tokens runs as; compiled, padded
        to at least ``rows`` rows and to the width's bucket."""
        width = max(width, 1)
        if not self.compiled:
            return num_windows, width
        fits = [b for b in self.buckets if b >= width]
        if not fits:
            raise ValueError(f"a window of {width} tokens is wider than the widest compiled row ({self.buckets[-1]})")
        return max(num_windows, rows), fits[0]

    def gather(self, val: ValData, windows: list[Window], rows: int = 0) -> Rows:
        """The rows of ``windows`` at :meth:`shape` (empty windows fill the padding rows)."""
        num_rows, width = self.shape(len(windows), max((w[1] for w in windows), default=1), rows)
        return gather(val, list(windows) + [EMPTY_WINDOW] * (num_rows - len(windows)), width)

    def __call__(
        self, inputs: Tensor, targets: Tensor, adapters: Adapters | None = None, hints: Tensor | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        """The nats of ``targets``; built with ``hints=True``, the model returns its logits (one graph per shape,
        hinted or not) and, given ``hints`` [rows, width] (-1 = none), the call also returns log p(hint) (the
        n-gram tilt's input, :mod:`pgolf.eval.ngram`)."""
        with autocast(inputs.device):
            if not self.hints:
                return self.fn(inputs, targets, looped=self.looped, adapters=adapters, reduction="none", **self.extra)
            logits = self.fn(inputs, None, looped=self.looped, adapters=adapters, **self.extra)
        log_probs = torch.log_softmax(logits.float(), dim=-1)  # fp32 at least, as the model's cross-entropy
        nats = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        if hints is None:
            return nats
        return nats, log_probs.gather(-1, hints.clamp(min=0).unsqueeze(-1)).squeeze(-1)


@dataclass
class CompileStats:
    """What compiling cost a mode: the shapes warmed up, the graphs built then and while scoring, the seconds."""

    enabled: bool
    shapes: int = 0
    graphs_warmup: int = 0
    graphs_scoring: int = 0
    warmup_seconds: float = 0.0
    mark: int = 0  # graphs_compiled() at the end of the warm-up

    def finish(self, name: str) -> dict:
        """The stats once the mode has scored (for metrics/eval.json); warns when scoring built a graph."""
        if self.enabled:
            self.graphs_scoring = tc.graphs_compiled() - self.mark
            if self.graphs_scoring:
                warnings.warn(f"eval {name}: torch.compile built {self.graphs_scoring} graph(s) after the warm-up, "
                              "inside the timed part (a shape the warm-up missed)", stacklevel=2)  # fmt: skip
        return {"enabled": self.enabled, "shapes": self.shapes, "graphs_warmup": self.graphs_warmup,
                "graphs_scoring": self.graphs_scoring, "warmup_seconds": round(self.warmup_seconds, 3)}  # fmt: skip


def _random_rows(shape: tuple[int, int], vocab_size: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)  # never the global RNG, never validation tokens
    ids = torch.randint(0, vocab_size, (2, *shape), generator=g)  # contiguous, like gathered rows (strides are guarded)
    return to_device(ids[0], device), to_device(ids[1], device)


def warmup(
    forward: EvalForward, shapes: Iterable[tuple[int, int]], adapters: Callable[[int], nn.Module] | None = None
) -> CompileStats:
    """Build the graph of every ``(rows, width)`` in ``shapes`` on random tokens, with the model as the mode will
    score (its ``eval()`` mode and ``requires_grad`` flags are guarded). Fixed model (``adapters`` None): forward
    under ``no_grad``. LoRA TTT: ``adapters(rows)`` gives throw-away adapters; forward and backward with grad
    enabled, as every TTT call runs. Eager: nothing to build."""
    shapes = sorted(set(shapes))
    if not forward.compiled:
        return CompileStats(enabled=False)
    start, before = time.perf_counter(), tc.graphs_compiled()
    set_recompile_limit(len(shapes))
    vocab_size = forward.model.cfg.vocab_size
    for i, shape in enumerate(shapes):
        inputs, targets = _random_rows(shape, vocab_size, forward.device, seed=i)
        if adapters is None:
            with torch.no_grad():
                forward(inputs, targets)
            continue
        lora = adapters(shape[0])
        with torch.enable_grad():
            nats = forward(inputs, targets, lora)
            (nats.float() * torch.full_like(nats.float(), 1.0 / nats.numel())).sum().backward()
    mark = tc.graphs_compiled()
    return CompileStats(True, len(shapes), mark - before, 0, time.perf_counter() - start, mark)


def batch_shapes(forward: EvalForward, batches: Iterable[list[Window]], rows: int = 0) -> set[tuple[int, int]]:
    """The shapes :meth:`EvalForward.gather` gives these batches of windows."""
    return {forward.shape(len(b), int(np.max([w[1] for w in b], initial=1)), rows) for b in batches if b}
