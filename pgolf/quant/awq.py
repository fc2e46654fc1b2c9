"""AWQ-lite (#1908): which column groups of the GPTQ matrices are rounded on a finer grid.

Statistic. act_rms[c] = sqrt(mean of x_c^2 over the calibration rows that reached the matrix). The calibrate stage
stores H = sum of x x^T over every such row (all ranks, batches and tokens, and every pass of a looped layer) and
divides it by nothing, so diag(H)[c] = sum of x_c^2 and act_rms[c] = sqrt(diag(H)[c] / rows), with rows = tokens x
passes from :func:`pgolf.quant.hessian.hessian_rows`. The division matters for the global scope only (a constant
per matrix changes no per-matrix order): without it a layer that the recurrence runs twice would score sqrt(2)
higher than the same activations through a layer run once. The frontier gets the same value from per-channel sums
of squares over its own row count.

Score. Group g of W [rows, cols] is the columns [g G, (g + 1) G), G = group_size; a trailing partial group is never
a candidate (the frontier takes cols // G groups). Its score is

    score_g = sum over c in g of act_rms[c] * mean over rows of |W[:, c]|,

in float64, in the quantization domain (the Hadamard-rotated W and H when the matrix is rotated: the grid that is
refined is that of the rotated columns).

Selection. ``global`` pools (score, tensor, group) over every candidate matrix and keeps the top_k; with the
frontier's top_k = 1 that is one group in the whole model. ``per_matrix`` keeps the top_k groups of each candidate.
Ties go to the earlier tensor (state order), then to the lower group.

The quantize stage decides the candidates (GPTQ matrices with more than ``min_elements`` elements, fewer bits than
``awq.bits`` and activation statistics) and GPTQ rounds the chosen columns on the finer grid
(:func:`pgolf.quant.gptq.gptq_quantize`, ``protected``).

Reference: parameter-golf PR #1908 (`_awq_lite_group_candidates`, `gptq_mixed_quantize`), as read in the frontier
record 2026-05-01 (#2060).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor


@dataclass(frozen=True)
class Group:
    """One selected column group: its tensor, its index g (columns [g G, (g + 1) G)) and its score."""

    name: str
    index: int
    score: float


def activation_rms(h: Tensor, rows: int) -> Tensor:
    """act_rms[c] = sqrt(H_cc / rows) in float64, for H = sum of x x^T over ``rows`` input rows."""
    if rows < 1:
        raise ValueError(f"AWQ-lite: a Hessian needs at least one row, got {rows}")
    return (h.diagonal().double().clamp_min(0.0) / rows).sqrt()


def group_scores(w: Tensor, act_rms: Tensor, group_size: int) -> Tensor:
    """float64 [cols // group_size]: sum over each group's columns of act_rms[c] * mean_rows |W[:, c]|."""
    if w.ndim != 2 or act_rms.shape != (w.shape[1],):
        raise ValueError(f"AWQ-lite: W {tuple(w.shape)} and act_rms {tuple(act_rms.shape)} do not match")
    num_groups = w.shape[1] // group_size
    saliency = act_rms.double() * w.double().abs().mean(dim=0)
    return saliency[: num_groups * group_size].reshape(num_groups, group_size).sum(dim=1)


def select_groups(scores: dict[str, Tensor], top_k: int, scope: Literal["global", "per_matrix"]) -> list[Group]:
    """The kept groups, best first (global) or matrix by matrix, best first in each (per_matrix); ``scores`` maps
    each candidate matrix, in state order, to its :func:`group_scores`."""
    if top_k < 1:
        raise ValueError(f"AWQ-lite: top_k must be >= 1, got {top_k}")
    pools = [list(scores)] if scope == "global" else [[name] for name in scores]
    kept = []
    for names in pools:
        pool = [(-float(s), i, g, name) for i, name in enumerate(names) for g, s in enumerate(scores[name].tolist())]
        kept += [(name, g, -neg) for neg, _, g, name in sorted(pool)[:top_k]]
    return [Group(name, g, score) for name, g, score in kept]


def starts_by_tensor(groups: list[Group], group_size: int) -> dict[str, tuple[int, ...]]:
    """The first columns of each tensor's kept groups, ascending."""
    out: dict[str, list[int]] = {}
    for group in groups:
        out.setdefault(group.name, []).append(group.index * group_size)
    return {name: tuple(sorted(starts)) for name, starts in out.items()}
