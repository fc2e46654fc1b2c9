"""The Triton kernels behind :mod:`pgolf.kernels.mlp` and :mod:`pgolf.kernels.softcap_ce`.

Imported only on the Triton path, so the rest of the package never needs triton. Every kernel masks its edges,
so no shape has to be a multiple of a block size. ``ACC`` is the accumulation dtype (fp32, or fp64 for fp64
inputs); ``PRECISION`` is ``tl.dot``'s input precision ("ieee" for fp32/fp64 inputs, "tf32" otherwise).
"""

import triton
import triton.language as tl


@triton.jit
def matmul_kernel(
    a_ptr, b_ptr, c_ptr, pre_ptr, M, N, K,
    stride_am, stride_ak, stride_bk, stride_bn, stride_cm, stride_cn, slope,
    ACTIVATE: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
    BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr, WIDE: tl.constexpr,
):  # fmt: skip
    """C = A @ B over one (BM, BN) tile. With ACTIVATE the epilogue stores pre = C (rounded to C's dtype) to
    ``pre_ptr`` and C = leaky(pre, slope)² (computed from the rounded pre) to ``c_ptr``; both share C's strides.
    ``WIDE``: element offsets in int64 (a tensor spans 2^31 elements or more; int32 offsets would wrap)."""
    rm = tl.program_id(0) * BM + tl.arange(0, BM)
    rn = tl.program_id(1) * BN + tl.arange(0, BN)
    rk = tl.arange(0, BK)
    if WIDE:
        rm, rn, rk = rm.to(tl.int64), rn.to(tl.int64), rk.to(tl.int64)
    acc = tl.zeros((BM, BN), dtype=ACC)
    for k0 in range(0, K, BK):
        kk = k0 + rk
        a = tl.load(
            a_ptr + rm[:, None] * stride_am + kk[None, :] * stride_ak,
            mask=(rm[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + kk[:, None] * stride_bk + rn[None, :] * stride_bn,
            mask=(kk[:, None] < K) & (rn[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    mask = (rm[:, None] < M) & (rn[None, :] < N)
    offs = rm[:, None] * stride_cm + rn[None, :] * stride_cn
    if ACTIVATE:
        pre = acc.to(c_ptr.dtype.element_ty)
        tl.store(pre_ptr + offs, pre, mask=mask)
        p = pre.to(ACC)
        y = tl.where(p > 0, p, p * slope)
        tl.store(c_ptr + offs, (y * y).to(c_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(c_ptr + offs, acc.to(c_ptr.dtype.element_ty), mask=mask)


@triton.jit
def leaky_square_grad_kernel(
    dh_ptr, pre_ptr, out_ptr, n, slope, ACC: tl.constexpr, BLOCK: tl.constexpr, WIDE: tl.constexpr
):  # fmt: skip
    """dpre = dh * d/dpre leaky(pre)² = dh * (2 pre if pre > 0 else 2 slope² pre), elementwise over n values
    (``WIDE``: int64 offsets, for n >= 2^31)."""
    pid = tl.program_id(0).to(tl.int64) if WIDE else tl.program_id(0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    p = tl.load(pre_ptr + offs, mask=mask, other=0.0).to(ACC)
    g = tl.load(dh_ptr + offs, mask=mask, other=0.0).to(ACC)
    d = tl.where(p > 0, 2.0 * p, (2.0 * slope * slope) * p) * g
    tl.store(out_ptr + offs, d.to(out_ptr.dtype.element_ty), mask=mask)


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
