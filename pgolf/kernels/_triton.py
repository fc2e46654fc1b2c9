"""The Triton kernels behind :mod:`pgolf.kernels.mlp` and :mod:`pgolf.kernels.softcap_ce`.

Imported only on the Triton path, so the rest of the package never needs triton. Every kernel masks its edges,
so no shape has to be a multiple of a block size. ``ACC`` is the accumulation dtype (fp32, or fp64 for fp64
inputs); ``PRECISION`` is ``tl.dot``'s input precision ("ieee" for fp32/fp64 inputs, "tf32" otherwise).
"""

import triton
import triton.language as tl


@triton.jit
def _grouped_tile(pid, M, N, BM: tl.constexpr, BN: tl.constexpr, GROUP_M: tl.constexpr):
    """(row tile, column tile) of program ``pid`` on a 1-D grid, in grouped order: programs walk GROUP_M row tiles
    down one column tile, then the next column tile, so a group's A rows (GROUP_M x BM x K) and each B column tile
    are fetched from HBM about once and reused from L2 by the group's other programs (Triton's matmul tutorial).
    The last group holds the leftover row tiles when GROUP_M does not divide their count."""
    num_m = tl.cdiv(M, BM)
    per_group = GROUP_M * tl.cdiv(N, BN)
    first_m = (pid // per_group) * GROUP_M
    rows = min(num_m - first_m, GROUP_M)
    return first_m + (pid % per_group) % rows, (pid % per_group) // rows


@triton.jit
def _load_a(a_ptr, aux_ptr, offs, mask, slope, LEAKY_GRAD_A: tl.constexpr, ACC: tl.constexpr):
    """One A tile; with LEAKY_GRAD_A, A = dh is turned into dpre = dh * phi'(pre) on the fly (pre read from
    ``aux_ptr`` at A's offsets), rounded to A's dtype as a stored dpre would be."""
    a = tl.load(a_ptr + offs, mask=mask, other=0.0)
    if LEAKY_GRAD_A:
        p = tl.load(aux_ptr + offs, mask=mask, other=0.0).to(ACC)
        d = tl.where(p > 0, 2.0 * p, (2.0 * slope * slope) * p) * a.to(ACC)
        a = d.to(a_ptr.dtype.element_ty)
    return a


@triton.jit
def _store_c(c_ptr, aux_ptr, acc, offs, mask, slope, ACTIVATE: tl.constexpr, ACC: tl.constexpr):
    """C = acc; with ACTIVATE, pre = acc (rounded to C's dtype) to ``aux_ptr`` and C = leaky(pre, slope)²
    computed from the rounded pre."""
    if ACTIVATE:
        pre = acc.to(c_ptr.dtype.element_ty)
        tl.store(aux_ptr + offs, pre, mask=mask)
        p = pre.to(ACC)
        y = tl.where(p > 0, p, p * slope)
        tl.store(c_ptr + offs, (y * y).to(c_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, aux_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, slope,
    ACTIVATE: tl.constexpr, LEAKY_GRAD_A: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, GROUP_M: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """C = A @ B, one (BM, BN) tile per program of a 1-D grid of cdiv(M, BM) * cdiv(N, BN) in grouped order.

    ``aux_ptr`` is pre (M, N) for one of two fusions: ACTIVATE (epilogue, C's strides) stores pre = A @ B and
    C = leaky(pre)²; LEAKY_GRAD_A (prologue, A's strides) multiplies C = (dh * phi'(pre)) @ B with A = dh.
    ``WIDE``: element offsets in int64 (a tensor spans 2^31 elements or more; int32 offsets would wrap)."""
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BM, BN, GROUP_M)
    rm = pid_m * BM + tl.arange(0, BM)
    rn = pid_n * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    if WIDE:
        rm, rn, rk = rm.to(tl.int64), rn.to(tl.int64), rk.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=ACC)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a_offs = rm[:, None] * stride_am + kk[None, :] * stride_ak
        a = _load_a(a_ptr, aux_ptr, a_offs, (rm[:, None] < M) & (kk[None, :] < K), slope, LEAKY_GRAD_A, ACC)
        b = tl.load(
            b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    _store_c(c_ptr, aux_ptr, acc, rm[:, None] * stride_cm + rn[None, :] * stride_cn, mask, slope, ACTIVATE, ACC)


def _config(bm: int, bn: int, bk: int, group_m: int, warps: int, stages: int) -> triton.Config:
    return triton.Config({"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group_m}, num_warps=warps, num_stages=stages)


# Large tiles for the record's shapes (98,304 x 512 -> 2048 and its gradients) and one small tile for small or
# fp32/fp64 problems; a config that does not fit the GPU's shared memory is skipped by the autotuner.
AUTOTUNE_CONFIGS = [
    _config(128, 128, 64, 8, 8, 3),
    _config(128, 128, 64, 8, 8, 4),
    _config(128, 256, 64, 8, 8, 3),
    _config(256, 128, 64, 8, 8, 3),
    _config(64, 64, 32, 8, 4, 4),
]
matmul_kernel_autotuned = triton.autotune(
    configs=AUTOTUNE_CONFIGS, key=["M", "N", "K", "ACTIVATE", "LEAKY_GRAD_A", "WIDE"]
)(matmul_kernel)
"""matmul_kernel with its tiles chosen per (M, N, K, fusion, dtypes) by timing AUTOTUNE_CONFIGS on the first call
(CUDA only: under Triton's interpreter, tests call matmul_kernel with explicit tiles)."""


@triton.jit
def softcap_ce_fwd_kernel(x_ptr, t_ptr, loss_ptr, lse_ptr, V, stride_x, cap, ACC: tl.constexpr, BLOCK_V: tl.constexpr):
    """One program per row: loss = logsumexp_j z_j - z_target with z = 2c sigmoid(2x/c) = c tanh(x/c) + c (the
    constant cancels), by an online max/sum-exp over vocab blocks. A negative target (ignore) gives loss 0."""
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * stride_x
    m = tl.full((), float("-inf"), ACC)
    s = tl.zeros((), ACC)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        valid = cols < V
        x = tl.load(base + cols, mask=valid, other=0.0).to(ACC)
        z = tl.where(valid, (2.0 * cap) / (1.0 + tl.exp(-2.0 * x / cap)), float("-inf"))
        m_new = tl.maximum(m, tl.max(z, axis=0))
        s = s * tl.exp(m - m_new) + tl.sum(tl.exp(z - m_new), axis=0)
        m = m_new
    lse = m + tl.log(s)
    t = tl.load(t_ptr + row)
    keep = t >= 0
    xt = tl.load(base + tl.where(keep, t, 0)).to(ACC)
    zt = (2.0 * cap) / (1.0 + tl.exp(-2.0 * xt / cap))
    tl.store(loss_ptr + row, tl.where(keep, lse - zt, 0.0))
    tl.store(lse_ptr + row, lse)


@triton.jit
def softcap_ce_bwd_kernel(
    x_ptr, t_ptr, lse_ptr, g_ptr, dx_ptr, V, stride_x, stride_dx, cap, ACC: tl.constexpr, BLOCK_V: tl.constexpr
):
    """One program per row: dx_j = g (softmax(z)_j - [j = target]) (1 - tanh²(x_j/c)), with 1 - tanh² = 4σ(1-σ)."""
    row = tl.program_id(0)
    t = tl.load(t_ptr + row)
    g = tl.where(t >= 0, tl.load(g_ptr + row).to(ACC), 0.0)
    lse = tl.load(lse_ptr + row)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + tl.arange(0, BLOCK_V)
        valid = cols < V
        x = tl.load(x_ptr + row.to(tl.int64) * stride_x + cols, mask=valid, other=0.0).to(ACC)
        sg = 1.0 / (1.0 + tl.exp(-2.0 * x / cap))
        p = tl.exp(2.0 * cap * sg - lse)
        d = g * (p - tl.where(cols == t, 1.0, 0.0)) * (4.0 * sg * (1.0 - sg))
        tl.store(dx_ptr + row.to(tl.int64) * stride_dx + cols, d.to(dx_ptr.dtype.element_ty), mask=valid)
