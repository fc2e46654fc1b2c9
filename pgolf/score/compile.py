"""``torch.compile`` for evaluation (``eval.compile``): the per-token forward of every scoring and TTT call as one
graph with dynamic shapes, as the record compiles ``forward_ttt`` (``dynamic=True``), a warm-up that builds it on
random tokens before the clock starts, and a count of the graphs built afterwards (expected 0; a warning
otherwise).

A call runs a batch of windows as ``[rows, width]`` input rows, one window per row, padded at the end (no
``cu_seqlens``: a row never holds two windows), and computes the head, the soft-cap and the loss at the ``[rows,
scored]`` positions the rows score (:func:`pgolf.score.documents.gather`). What varies between calls is the width
(short documents, a document's first chunks, a sliding batch's tail), the scored count (a plain window scores every
position, a TTT chunk 48, a sliding window its stride) and the rows (a rank's last batch; LoRA TTT's batch of fewer
than ``batch_docs`` documents). All three are symbolic in the one graph, so no shape compiles another (the record:
one graph, 84-138 s of warm-up; static buckets would compile 11-24 here). A size of one specializes a dynamic
graph, so a compiled call is at least :data:`MIN_WIDTH` wide and scores at least :data:`MIN_SCORED` positions, and
a fixed model's batch has at least two rows (padding trails the valid prefix, empty rows hold no window, padded
positions are outside the scored mask: no scored number changes, tests/score/test_compile.py); LoRA TTT keeps its
row count (its adapters have one row per document), so a batch of one document may add a second graph.

The warm-up runs shapes computed from the mode's configuration alone, never from a rank's windows (so it is the
same on every rank, and ends with a barrier) and never from validation tokens: forward only for fixed models,
forward + backward through throw-away adapters built on the device for LoRA TTT. The LoRA adapters (and LoRA TTT's
AsymLogit caps, :class:`pgolf.eval.lora_ttt.AsymSoftcap`) are inputs of the graph, not constants: one graph serves
every document batch, and global SGD's updates of the caps reach it. The graphs are guarded on the model's state
(``eval()``, which parameters require grad, grad mode), not on its identity, so the modes' model copies share
them; the TTT weight updates (LoRA's AdamW, global and chunk SGD, all eager) change values in place and keep them
valid.

References: the record's compiled ``forward_ttt`` and its random-token warm-up outside the timer;
:mod:`pgolf.compiler`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from pgolf import compiler as tc
from pgolf import dist
from pgolf.dist import autocast, to_device
from pgolf.model.layers import Adapters
from pgolf.score.bpb import ValData
from pgolf.score.documents import EMPTY_WINDOW, Rows, Window, gather

Backend = str | Callable | None
MIN_WIDTH = 16
"""The narrowest compiled row (a narrower one would specialize the dynamic graph on its size)."""
MIN_SCORED = 2
"""The fewest scored positions of a compiled row (a size of 1 specializes a dynamic graph)."""
WARMUP_GRAPHS = 4
"""Graphs a mode's warm-up may build (one per schedule is the aim; a size-one dimension may add one)."""


def backend_for(compile_flag: bool, device: torch.device) -> str | None:
    """The backend evaluation compiles with: ``eval.compile`` on a CUDA device, else None (eager)."""
    return tc.BACKEND if tc.enabled(compile_flag, device) else None


Shape = tuple[int, int, int]  # (rows, width, scored positions per row)


class EvalForward:
    """Per-token nats ``[rows, scored]`` of padded window rows through ``model`` with the schedule ``looped``,
    eager (``backend`` None) or through one compiled graph of dynamic shape. ``logit_cap``: an eval-time cap module
    the model applies instead of its fixed soft-cap (LoRA TTT's AsymLogit; a graph input when compiled).
    ``min_rows``: the fewest rows a compiled batch is padded to (2 for a fixed model; 0 for LoRA TTT, whose rows
    are its adapters')."""

    def __init__(
        self,
        model: nn.Module,
        looped: bool,
        backend: Backend,
        max_width: int,
        logit_cap: nn.Module | None = None,
        hints: bool = False,
        min_rows: int = 2,
    ) -> None:
        self.model, self.looped, self.logit_cap, self.hints = model, looped, logit_cap, hints
        self.extra = {} if logit_cap is None else {"logit_cap": logit_cap}  # a model need not know the keyword
        self.compiled, self.max_width, self.min_rows = backend is not None, max_width, min_rows
        self.fn = tc.CompiledModel(model, backend, dynamic=True) if self.compiled else model

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def shape(self, num_windows: int, width: int, scored: int) -> Shape:
        """(rows, width, scored) a batch of ``num_windows`` windows of at most ``width`` tokens scoring at most
        ``scored`` targets each runs as; compiled, padded to the minimum sizes of a dynamic graph."""
        width, scored = max(width, 1), max(scored, 1)
        if width > self.max_width:
            raise ValueError(f"a window of {width} tokens is wider than the widest row ({self.max_width})")
        if not self.compiled:
            return num_windows, width, scored
        return max(num_windows, self.min_rows), max(width, MIN_WIDTH), max(scored, MIN_SCORED)

    def gather(self, val: ValData, windows: list[Window]) -> Rows:
        """The rows of ``windows`` at :meth:`shape` (empty windows fill the padding rows)."""
        width = max((w[1] for w in windows), default=1)
        scored = max((w[3] - w[2] for w in windows if w[1]), default=1)
        rows, width, scored = self.shape(len(windows), width, scored)
        return gather(val, list(windows) + [EMPTY_WINDOW] * (rows - len(windows)), width, scored)

    def __call__(
        self, inputs: Tensor, targets: Tensor, adapters: Adapters | None = None, hints: Tensor | None = None,
        cols: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:  # fmt: skip
        """The nats of ``targets`` at the row offsets ``cols`` ([rows, scored]; None: every position). Built with
        ``hints=True``, the model returns its logits there (one graph, hinted or not) and, given ``hints``
        [rows, scored] (-1 = none), the call also returns log p(hint) (the n-gram tilt's input,
        :mod:`pgolf.eval.ngram`)."""
        with autocast(inputs.device):
            if not self.hints:
                return self.fn(inputs, targets, looped=self.looped, adapters=adapters, reduction="none",
                               positions=cols, **self.extra)  # fmt: skip
            logits = self.fn(inputs, None, looped=self.looped, adapters=adapters, positions=cols, **self.extra)
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
    fullgraph: bool = True

    def finish(self, name: str, forward: EvalForward | None = None) -> dict:
        """The stats once the mode has scored (for metrics/eval.json); warns when scoring built a graph. With the
        mode's ``forward``: whether it stayed one graph (``fullgraph``; where it broke, if it did not)."""
        out = {"enabled": self.enabled, "shapes": self.shapes, "graphs_warmup": self.graphs_warmup,
               "graphs_scoring": self.graphs_scoring, "warmup_seconds": round(self.warmup_seconds, 3)}  # fmt: skip
        if self.enabled:
            self.graphs_scoring = out["graphs_scoring"] = tc.graphs_compiled() - self.mark
            if self.graphs_scoring:
                warnings.warn(f"eval {name}: torch.compile built {self.graphs_scoring} graph(s) after the warm-up, "
                              "inside the timed part (a shape the warm-up missed)", stacklevel=2)  # fmt: skip
            if forward is not None and isinstance(forward.fn, tc.CompiledModel):
                out |= tc.graph_report(forward.fn)
        return out


def _random_rows(shape: Shape, vocab_size: int, device: torch.device, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Random input ids [rows, width], targets [rows, scored] and the columns they sit at (the last ``scored``
    positions of each row, as a TTT chunk's): never the global RNG, never validation tokens."""
    rows, width, scored = shape
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (rows, width), generator=g)
    targets = torch.randint(0, vocab_size, (rows, scored), generator=g)
    cols = (torch.arange(scored) + (width - scored)).expand(rows, scored).contiguous()
    return to_device(ids, device), to_device(targets, device), to_device(cols, device)


def warmup_shapes(forward: EvalForward, rows: int, width: int, scored: int) -> list[Shape]:
    """The shapes a mode's warm-up runs, from its configuration alone (the same on every rank): its largest call
    and a small one, which a dynamic graph must serve without compiling again."""
    if not forward.compiled:
        return []
    big = forward.shape(rows, min(width, forward.max_width), min(scored, width))
    small = forward.shape(min(rows, 2), MIN_WIDTH, MIN_SCORED)
    return list(dict.fromkeys([big, small]))


def warmup(
    forward: EvalForward, shapes: Iterable[Shape], adapters: Callable[[int], nn.Module] | None = None
) -> CompileStats:
    """Build the mode's graph on random tokens at each of ``shapes``, with the model as the mode will score (its
    ``eval()`` mode and ``requires_grad`` flags are guarded), then wait for every rank. Fixed model (``adapters``
    None): forward under ``no_grad``. LoRA TTT: ``adapters(rows)`` gives throw-away adapters on the device; forward
    and backward with grad enabled, as every TTT call runs. Eager: nothing to build."""
    shapes = list(dict.fromkeys(shapes))
    if not forward.compiled:
        return CompileStats(enabled=False)
    start, before = time.perf_counter(), tc.graphs_compiled()
    tc.raise_recompile_limit(before + WARMUP_GRAPHS)
    vocab_size = forward.model.cfg.vocab_size
    for i, shape in enumerate(shapes):
        inputs, targets, cols = _random_rows(shape, vocab_size, forward.device, seed=i)
        if adapters is None:
            with torch.no_grad():
                forward(inputs, targets, cols=cols)
            continue
        with torch.enable_grad():
            nats = forward(inputs, targets, adapters(shape[0]), cols=cols)
            (nats.float() * torch.full_like(nats.float(), 1.0 / nats.numel())).sum().backward()
    dist.barrier()
    mark = tc.graphs_compiled()
    return CompileStats(True, len(shapes), mark - before, 0, time.perf_counter() - start, mark)
