"""What the evaluation modes share: score accumulation, a per-token recorder for audits, the result type and the
scoring of a list of windows with a fixed model (through an :class:`~pgolf.score.compile.EvalForward`, eager or
compiled).

Sums are float64 on the model's device (no host sync per batch) and all-reduced once at the end of a mode
(:meth:`Scores.totals` -> :meth:`BpbTotals.all_reduce`); per-rank figures are never averaged.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pgolf.dist import group_rank_world
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.compile import Backend, EvalForward
from pgolf.score.documents import Rows, Window, length_batches, rank_share


@dataclass
class ModeResult:
    """One evaluation mode's totals (over all ranks), timings, legality and per-phase figures."""

    name: str
    totals: BpbTotals
    seconds: dict[str, float] = field(default_factory=dict)
    passes: int = 1  # scoring passes over the targets; more than one re-scores trained tokens (never compliant)
    phases: list[dict] = field(default_factory=list)
    compile: dict = field(default_factory=dict)  # CompileStats.finish(): warm-up seconds, graphs built (not timed)
    details: dict = field(default_factory=dict)  # a mode's own figures (e.g. LoRA TTT's ngram_tilt), by name

    def summary(self) -> dict:
        t = self.totals
        return {"val_bpb": t.val_bpb, "val_loss": t.val_loss, "tokens": t.tokens, "bytes": t.bytes,
                "passes": self.passes, "seconds": self.seconds, "phases": self.phases,
                "compile": self.compile, **self.details}  # fmt: skip


class TokenRecorder:
    """Per-target nats by stream position, with how often and at which scoring step each was scored (audits).

    A later score of the same position overwrites the earlier one (only a non-compliant mode re-scores).
    """

    def __init__(self, num_positions: int) -> None:
        self.nats = np.full(num_positions, np.nan)
        self.counts = np.zeros(num_positions, dtype=np.int64)
        self.steps = np.full(num_positions, -1, dtype=np.int64)
        self.step = 0

    def record(self, positions: np.ndarray, nats: np.ndarray) -> None:
        self.nats[positions] = nats
        self.steps[positions] = self.step
        np.add.at(self.counts, positions, 1)
        self.step += 1


@dataclass
class EvalContext:
    """What every scoring and evaluation call shares: the layer schedule, this rank, the audit recorder, progress
    bars and the compile backend (None: eager)."""

    looped: bool
    rank: int = 0
    world_size: int = 1
    recorder: TokenRecorder | None = None
    progress: bool = False
    compile_backend: Backend = None


def eval_context(
    looped: bool, *, progress: bool = False, compile_backend: Backend = None, recorder: TokenRecorder | None = None
) -> EvalContext:
    """The context of a scoring or evaluation call in this process: its rank and world size (of the initialized
    process group; 0 and 1 without one), the layer schedule, and the rest as given. The one way to build it."""
    rank, world_size = group_rank_world()
    return EvalContext(looped, rank, world_size, recorder, progress, compile_backend)


class Scores:
    """Running L, N, B of one rank (and an optional recorder)."""

    def __init__(self, device: torch.device, recorder: TokenRecorder | None = None) -> None:
        self.nats = torch.zeros((), dtype=torch.float64, device=device)
        self.tokens = 0
        self.bytes = 0
        self.recorder = recorder

    def add(self, nats: Tensor, rows: Rows, mask: Tensor) -> None:
        """Add the scored targets of a batch; ``nats`` is the per-token loss [B, T] the rows were scored with."""
        nats = nats.detach()
        self.nats += torch.where(mask, nats.double(), 0.0).sum()
        self.tokens += int(rows.mask.sum())
        self.bytes += int(rows.target_bytes.sum())
        if self.recorder is not None:
            self.recorder.record(rows.positions[rows.mask], nats[mask].double().cpu().numpy())

    def local(self) -> BpbTotals:
        return BpbTotals(float(self.nats), self.tokens, self.bytes)

    def totals(self) -> BpbTotals:
        """The totals over all ranks (one all-reduce)."""
        return self.local().all_reduce()


def set_trainable(model: nn.Module, trainable: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(trainable)


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def window_batches(windows: list[Window], batch_windows: int, rank: int = 0, world_size: int = 1) -> list[list[Window]]:
    """This rank's batches of ``windows``, batched by length (longest first)."""
    return rank_share(length_batches(windows, batch_windows), rank, world_size)


def score_windows(
    forward: EvalForward,
    val: ValData,
    windows: list[Window],
    scores: Scores,
    *,
    batch_windows: int,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    desc: str = "score",
) -> None:
    """Score this rank's share of ``windows`` (:func:`window_batches`) with the model as it is (no_grad), each
    batch's head and loss at its scored positions only."""
    batches = window_batches(windows, batch_windows, rank, world_size)
    bar = tqdm(batches, desc=desc, unit="batch", disable=not (progress and rank == 0), leave=False)
    with torch.no_grad():
        for batch in bar:
            rows = forward.gather(val, batch)
            inputs, targets, mask, cols = rows.tensors(forward.device)
            scores.add(forward(inputs, targets, cols=cols), rows, mask)
