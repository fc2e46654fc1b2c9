"""Fused MLP up-projection ``h = leaky_relu(x W^T, slope)²`` (record §4.1, written for any CUDA GPU).

Forward: one tiled Triton matmul whose epilogue stores both ``pre = x W^T`` (rounded to x's dtype) and
``h = leaky(pre)²`` computed from the rounded pre. ``pre`` is saved for backward with x and W.
Backward: one elementwise kernel ``dpre = dh * (2 pre if pre > 0 else 2 slope² pre)``, then the same matmul kernel
for ``dx = dpre W`` and ``dW = dpre^T x``. Shapes need not be multiples of the blocks (edges are masked).

The eager path (CPU, or ``triton=False``) is the reference: ``F.leaky_relu(F.linear(x, w), slope).square()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Blocks = tuple[int, int, int]  # (BM, BN, BK) of the matmul; tl.dot needs each >= 16
CUDA_BLOCKS: Blocks = (64, 64, 32)
ELEMENTWISE_BLOCK = 1024


def eager_up_activation(x: Tensor, w: Tensor, slope: float) -> Tensor:
    return F.leaky_relu(F.linear(x, w), slope).square()


def _acc_and_precision(dtype: torch.dtype):
    import triton.language as tl

    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return acc, "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def _matmul(a: Tensor, b: Tensor, blocks: Blocks, pre: Tensor | None = None, slope: float = 0.0) -> Tensor:
    """a (M, K) @ b (K, N) with any strides; with ``pre`` given, also the LeakyReLU² epilogue (see module doc)."""
    import triton

    from pgolf.kernels._triton import matmul_kernel

    (M, K), N = a.shape, b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    bm, bn, bk = blocks
    acc, precision = _acc_and_precision(a.dtype)
    matmul_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        a, b, c, c if pre is None else pre, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), slope,
        ACTIVATE=pre is not None, ACC=acc, PRECISION=precision, BM=bm, BN=bn, BK=bk,
    )  # fmt: skip
    return c


class _FusedUpActivation(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, w: Tensor, slope: float, blocks: Blocks) -> Tensor:
        x2 = x.reshape(-1, x.shape[-1])
        pre = torch.empty(x2.shape[0], w.shape[0], device=x.device, dtype=x.dtype)
        h = _matmul(x2, w.t(), blocks, pre=pre, slope=slope)
        ctx.save_for_backward(x2, w, pre)
        ctx.slope, ctx.blocks, ctx.x_shape = slope, blocks, x.shape
        return h.view(*x.shape[:-1], w.shape[0])

    @staticmethod
    def backward(ctx, dh: Tensor):
        import triton

        from pgolf.kernels._triton import leaky_square_grad_kernel

        x2, w, pre = ctx.saved_tensors
        dh = dh.reshape(pre.shape).contiguous()
        dpre = torch.empty_like(pre)
        acc, _ = _acc_and_precision(pre.dtype)
        n = pre.numel()
        leaky_square_grad_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
            dh, pre, dpre, n, ctx.slope, ACC=acc, BLOCK=ELEMENTWISE_BLOCK
        )
        dx = _matmul(dpre, w, ctx.blocks) if ctx.needs_input_grad[0] else None
        dw = _matmul(dpre.t(), x2, ctx.blocks) if ctx.needs_input_grad[1] else None
        return None if dx is None else dx.view(ctx.x_shape), dw, None, None


def fused_up_activation(
    x: Tensor, w: Tensor, slope: float, *, triton: bool | None = None, blocks: Blocks = CUDA_BLOCKS
) -> Tensor:
    """``leaky_relu(x W^T, slope)²`` for x (..., K) and w (N, K) of x's dtype -> (..., N).

    ``triton=None`` picks the Triton kernel for CUDA tensors and the eager reference otherwise; True forces the
    kernel (tests run it on CPU under Triton's interpreter), False forces eager."""
    if triton if triton is not None else x.is_cuda:
        return _FusedUpActivation.apply(x, w, slope, blocks)
    return eager_up_activation(x, w, slope)
