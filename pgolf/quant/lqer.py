"""LQER: a low-rank correction Â B̂ of a quantized matrix's residual E = W - diag(s) Q, packed to a few bits.

E is factored by a plain thin SVD (rank r, singular values folded into A). The "asym" pack stores A as int2 in
[-2, 1] with one fp16 scale max|A|/1.5 (no zero point) and B as int4 in [-8, 7] with one fp16 scale max|g|/7.5 per
`group` consecutive row-major values; the "sym" pack stores both with per-row scales max|row|/(2^(bits-1)-1). Only the
top-k matrices by ||E||_F get a correction. For a rotated matrix, E is taken in the rotated domain and the correction
is added before un-rotating (formats.dequantize).

References:
    Zhang et al. 2024, "LQER: Low-Rank Quantization Error Reconstruction"; parameter-golf record PR #1855
    (`_lqer_pack_asym`, `_lqer_pack`), PR #2143 (LQER with Hadamard rotation).
"""

from __future__ import annotations

import torch
from torch import Tensor

from pgolf.quant.bits import check_bits
from pgolf.quant.formats import (
    LowRankCorrection,
    QuantizedMatrix,
    lowrank_dense,
    matrix_dense,
    to_fp16_scale,
)


def quantization_residual(target: Tensor, fmt: QuantizedMatrix, correction: LowRankCorrection | None = None) -> Tensor:
    """E = target - diag(s) Q in fp32 (AWQ-lite's protected columns on their own step s_hi, so LQER is fitted on the
    residual of the finer grid), minus Â B̂ when a correction is given (the residual left after LQER); `target` must
    be in the same (rotated or not) domain as the stored Q."""
    e = target.float() - matrix_dense(fmt)
    return e if correction is None else e - lowrank_dense(correction)


def low_rank_residual(e: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """(A, B) with A = U_r diag(S_r) [rows, r] and B = V_r^T [r, cols], r = min(rank, min(E.shape))."""
    if rank < 1:
        raise ValueError(f"LQER rank must be >= 1, got {rank}")
    u, s, vh = torch.linalg.svd(e.float(), full_matrices=False)
    r = min(rank, s.numel())
    return u[:, :r] * s[:r], vh[:r].contiguous()


def _round_clamp(x: Tensor, scale: Tensor, lo: int, hi: int) -> Tensor:
    return torch.clamp(torch.round(x / scale.float()), lo, hi).to(torch.int8)


def pack_asym(a: Tensor, b: Tensor, group: int) -> LowRankCorrection:
    """int2 A with one scale, int4 B with per-group scales; numel(B) must be a multiple of `group`."""
    if group < 1 or b.numel() % group != 0:
        raise ValueError(f"LQER asym pack: numel(B) = {b.numel()} (B {tuple(b.shape)}) is not a multiple of {group}")
    a, b = a.float(), b.float()
    a_scale = to_fp16_scale(a.abs().amax() / 1.5)
    groups = b.reshape(-1, group)
    b_scale = to_fp16_scale(groups.abs().amax(dim=1) / 7.5)
    b_q = _round_clamp(groups, b_scale[:, None], -8, 7).reshape(b.shape)
    return LowRankCorrection(
        a_q=_round_clamp(a, a_scale, -2, 1), a_scale=a_scale, b_q=b_q, b_scale=b_scale, mode="asym", group=group
    )


def pack_sym(a: Tensor, b: Tensor, bits: int) -> LowRankCorrection:
    """A and B each with one fp16 scale per row, values in ±(2^(bits-1)-1)."""
    rho = 2 ** (check_bits(bits, "LQER sym pack") - 1) - 1
    a, b = a.float(), b.float()
    a_scale = to_fp16_scale(a.abs().amax(dim=1) / rho)
    b_scale = to_fp16_scale(b.abs().amax(dim=1) / rho)
    return LowRankCorrection(
        a_q=_round_clamp(a, a_scale[:, None], -rho, rho),
        a_scale=a_scale,
        b_q=_round_clamp(b, b_scale[:, None], -rho, rho),
        b_scale=b_scale,
        mode="sym",
        group=0,
    )


def select_top_k(errors: dict[str, float], k: int) -> list[str]:
    """The k names with the largest error, largest first, ties broken by name."""
    if k < 0:
        raise ValueError(f"LQER top-k must be >= 0, got {k}")
    return sorted(errors, key=lambda name: (-errors[name], name))[:k]
