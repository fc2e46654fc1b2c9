"""SDClip scales, round-to-nearest, GPTQ with act-order and lazy block updates, int8 gate rows, and error measures.

GPTQ quantizes the columns of W (rows = out, cols = in) one at a time in order of decreasing Hessian diagonal, and
spreads each column's rounding error over the not-yet-quantized columns through the upper Cholesky factor U of H^-1
(H^-1 = U^T U), so that the H-weighted error trace((W-Ŵ) H (W-Ŵ)^T) stays small. Per-row scales are fixed before the
loop (SDClip: s = k·std(row)/c rounded to fp16, c = 2^(bits-1)-1), so the grid is {-c, ..., c}·s.

U comes from one of two equal computations (``inverse``): "cholesky", chol(H) -> H^-1 -> chol(H^-1) (the record), or
"reverse_cholesky", one factorization of H flipped on both axes (#2054; see
:func:`_reverse_inverse_upper_factor` for why it is the same U).

AWQ-lite (#1908): the columns of a few protected groups (:class:`~pgolf.quant.formats.ProtectedGroups`,
chosen by :mod:`pgolf.quant.awq`) are rounded on a finer grid, the same SDClip clip with c_hi = 2^(awq_bits-1)-1
levels and step s_hi = fp16(k·std(row)/c_hi); they feed their (smaller) rounding error forward like every other
column.

References:
    Frantar et al. 2022, "GPTQ" (IST-DASLab/gptq `fasterquant`); parameter-golf record PR #1855
    (`gptq_quantize_weight`, `_quantize_gate_int8_row`), SDClip from the 2026-04-05 record, RTN baseline from PR #374;
    PR #1908 (AWQ-lite), PR #2054 (reverse-Cholesky inverse).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from pgolf.errors import PgolfError
from pgolf.quant.bits import check_bits
from pgolf.quant.formats import GateInt8Row, ProtectedGroups, to_fp16_scale

InverseMethod = Literal["cholesky", "reverse_cholesky"]


def clip_range(bits: int) -> int:
    """c = 2^(bits-1) - 1: int6 → 31, int7 → 63, int8 → 127."""
    return 2 ** (check_bits(bits, "GPTQ") - 1) - 1


def sdclip_scales(w: Tensor, clip_sigmas: float, bits: int) -> Tensor:
    """fp16 per-row scales fp16(max(k·std(row)/c, 1e-10)), std unbiased over the original row."""
    return to_fp16_scale(clip_sigmas * w.float().std(dim=1) / clip_range(bits))


def rtn_rowmax_scales(w: Tensor, bits: int) -> Tensor:
    """fp16 per-row scales max(rowmax|W|/c, 1/c): the round-to-nearest baseline."""
    c = clip_range(bits)
    return to_fp16_scale((w.float().abs().amax(dim=1) / c).clamp_min(1.0 / c))


def rtn_percentile_scales(w: Tensor, bits: int, percentile: float) -> Tensor:
    """fp16 per-row scales max(P_p(|row|)/c, 1/c), P_p the p-th percentile (linear interpolation, as
    ``numpy.quantile``); p = 100 is :func:`rtn_rowmax_scales`. Entries beyond the clip saturate at +-c."""
    if not 0.0 < percentile <= 100.0:
        raise ValueError(f"rtn_clip_percentile must be in (0, 100], got {percentile}")
    if percentile >= 100.0:
        return rtn_rowmax_scales(w, bits)
    c = clip_range(bits)
    clip = torch.quantile(w.float().abs(), percentile / 100.0, dim=1)
    return to_fp16_scale((clip / c).clamp_min(1.0 / c))


def rtn_quantize(w: Tensor, scales: Tensor, bits: int) -> Tensor:
    """int8 Q = clamp(round_half_even(W / s), -c, c) with s per row.

    #374 clamps its int6 matrices to [-32, 31] instead of [-31, 31]; with row-max scales |W / s| <= 31, so -32
    never occurs and the two grids give identical integers. Symmetric [-c, c] is kept because the extra negative
    level only matters for clipped scales, where it would skew saturation to one side (#374's clipped int8
    embeddings use the symmetric [-127, 127] too)."""
    c = clip_range(bits)
    return torch.clamp(torch.round(w.float() / scales.float()[:, None]), -c, c).to(torch.int8)


def quantize_gate_int8_row(w: Tensor) -> GateInt8Row:
    """Per-row absmax int8: s = fp16(max|row| / 127), Q = clamp(round(W / s), -127, 127)."""
    scale = to_fp16_scale(w.float().abs().amax(dim=1) / 127.0)
    return GateInt8Row(q=rtn_quantize(w, scale, 8), scale=scale)


def _prepare_hessian(h: Tensor, damping: float, act_order: bool) -> tuple[Tensor, Tensor, Tensor]:
    """Dead columns set to 1 on the diagonal, damping added, columns ordered: returns (H[perm][:, perm], perm, dead)."""
    h = h.float().clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h.diagonal().add_(damping * h.diagonal().mean())
    perm = torch.argsort(h.diagonal(), descending=True) if act_order else torch.arange(h.shape[0])
    return h[perm][:, perm], perm, dead


def _cholesky_failed(shape: tuple[int, ...]) -> PgolfError:
    return PgolfError(
        f"GPTQ: Cholesky failed for the Hessian of the weight of shape {shape} (H is not positive definite); "
        "raise the GPTQ damping or collect more calibration tokens"
    )


def _inverse_upper_factor(h: Tensor, shape: tuple[int, ...]) -> Tensor:
    """U upper-triangular with H^-1 = U^T U: chol(H), H^-1 from it, then the upper Cholesky factor of H^-1."""
    chol, info = torch.linalg.cholesky_ex(h)
    if info.item() == 0:
        chol, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(chol), upper=True)
    if info.item() != 0:
        raise _cholesky_failed(shape)
    return chol


def _reverse_inverse_upper_factor(h: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The same U from one factorization. With J the exchange matrix (J = J^T = J^-1), chol(J H J) = L gives
    H = (J L J)(J L J)^T, and R = J L J (L flipped on both axes) is upper-triangular with a positive diagonal. Then
    H^-1 = R^-T R^-1 = (R^-1)^T (R^-1), and R^-1 is upper-triangular with a positive diagonal: by the uniqueness of
    the Cholesky factor it is U. J H^T J, not J H J: its lower triangle is H's lower triangle, the one the Cholesky
    path reads, so an H that is symmetric only up to float rounding (X^T X summed in fp32) gives that path's U."""
    chol, info = torch.linalg.cholesky_ex(h.mT.flip(0, 1))
    if info.item() != 0:
        raise _cholesky_failed(shape)
    r = chol.flip(0, 1)
    return torch.linalg.solve_triangular(r, torch.eye(r.shape[0], dtype=r.dtype, device=r.device), upper=True)


def inverse_upper_factor(h: Tensor, method: InverseMethod, shape: tuple[int, ...] = ()) -> Tensor:
    """U upper-triangular with H^-1 = U^T U, by ``method`` (see the module docstring); ``shape`` names the weight in
    the error raised when H is not positive definite."""
    if method == "cholesky":
        return _inverse_upper_factor(h, shape)
    if method == "reverse_cholesky":
        return _reverse_inverse_upper_factor(h, shape)
    raise ValueError(f"unknown GPTQ inverse method {method!r}; expected 'cholesky' or 'reverse_cholesky'")


def _quantize_block(
    w_blk: Tensor, u_blk: Tensor, sf: Tensor, c: int, fine: tuple[list[bool], Tensor, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Quantize one block of columns in place order; returns (Q block, error matrix Err) for the lazy update.

    ``fine``: (per-column flags of the block, step s_hi, range c_hi) for AWQ-lite's protected columns."""
    q_blk = torch.zeros_like(w_blk)
    err = torch.zeros_like(w_blk)
    for j in range(w_blk.shape[1]):
        step, limit = (fine[1], fine[2]) if fine is not None and fine[0][j] else (sf, c)
        q = torch.clamp(torch.round(w_blk[:, j] / step), -limit, limit)
        q_blk[:, j] = q
        e = (w_blk[:, j] - q * step) / u_blk[j, j]
        w_blk[:, j:] -= e[:, None] * u_blk[j, j:][None, :]
        err[:, j] = e
    return q_blk, err


def gptq_quantize(
    w: Tensor,
    h: Tensor,
    scales: Tensor,
    bits: int,
    *,
    block_size: int = 128,
    damping: float = 0.01,
    act_order: bool = True,
    inverse: InverseMethod = "cholesky",
    protected: ProtectedGroups | None = None,
) -> Tensor:
    """int8 Q [rows, cols] in [-c, c], in the original column order, for the fixed fp16 per-row `scales`.

    `h` is the (cols × cols) input Hessian X^T X; columns with H_jj = 0 (inputs that are always zero) are zeroed in W.
    `protected`: AWQ-lite's column groups, whose codes lie in ±(2^(protected.bits-1)-1) on the step protected.scale.
    """
    if w.ndim != 2 or h.shape != (w.shape[1], w.shape[1]) or scales.shape != (w.shape[0],):
        raise ValueError(f"GPTQ: W {tuple(w.shape)}, H {tuple(h.shape)}, scales {tuple(scales.shape)} do not match")
    if protected is not None and (protected.scale.shape != scales.shape or protected.bits <= bits):
        raise ValueError(f"GPTQ: protected groups need a per-row scale and more than {bits} bits")
    c = clip_range(bits)
    cols = w.shape[1]
    h_perm, perm, dead = _prepare_hessian(h, damping, act_order)
    u = inverse_upper_factor(h_perm, inverse, tuple(w.shape))
    w_work = w.float()[:, perm].clone()
    w_work[:, dead[perm]] = 0.0
    sf = scales.float()
    flags = None if protected is None else protected.columns(cols)[perm].tolist()
    q_perm = torch.zeros_like(w_work)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        fine = None if flags is None else (flags[i1:i2], protected.scale.float(), clip_range(protected.bits))
        q_perm[:, i1:i2], err = _quantize_block(w_work[:, i1:i2].clone(), u[i1:i2, i1:i2], sf, c, fine)
        w_work[:, i2:] -= err @ u[i1:i2, i2:]
    return q_perm[:, torch.argsort(perm)].to(torch.int8)


def hessian_error(error: Tensor, h: Tensor) -> float:
    """trace(E H E^T) for the error E = W - Ŵ, the H-weighted (output-space) error GPTQ minimizes, in fp64.

    E and H must be in the same domain (both Hadamard-rotated or neither); the rotation leaves the value unchanged."""
    e = error.double()
    return float(((e @ h.double()) * e).sum())


def relative_error(error: Tensor, w: Tensor) -> float:
    """||E||_F / ||W||_F for the error E = W - Ŵ, in fp64; an all-zero W (whose E is zero too) gives 0."""
    return float(error.double().norm() / w.double().norm().clamp_min(1e-12))
