"""Fused MLP up-projection ``h = leaky_relu(x W^T, slope)²`` (the record's kernel as math, written for any CUDA GPU).

Forward: one tiled Triton matmul whose epilogue stores both ``pre = x W^T`` (rounded to x's dtype) and
``h = leaky(pre)²`` computed from the rounded pre. ``pre`` is saved for backward with x and W.
Backward: one elementwise kernel ``dpre = dh * (2 pre if pre > 0 else 2 slope² pre)``, then the same matmul kernel
for ``dx = dpre W`` and ``dW = dpre^T x``. Shapes need not be multiples of the blocks (edges are masked).

The eager path (CPU, or ``triton=False``) is the reference: ``F.leaky_relu(F.linear(x, w), slope).square()``.

Offsets are int32 below 2^31 elements and int64 above (:func:`needs_int64`), where int32 would wrap.

Both directions are custom ops (``pgolf::up_activation``, ``pgolf::up_activation_backward``) with fake
implementations, so a compiled model treats them as opaque calls and stays one graph.
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


INT32_LIMIT = 2**31 - 1


def needs_int64(*tensors: Tensor) -> bool:
    """Whether some element offset of ``tensors`` (sum of (size - 1) * stride) passes int32: the kernels then
    address in int64 (``WIDE``); below it they keep the cheaper int32 arithmetic."""
    return any(sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) > INT32_LIMIT for t in tensors)


def _matmul(
    a: Tensor, b: Tensor, blocks: Blocks, pre: Tensor | None = None, slope: float = 0.0, wide: bool | None = None
) -> Tensor:
    """a (M, K) @ b (K, N) with any strides; with ``pre`` given, also the LeakyReLU² epilogue (see module doc).
    ``wide``: int64 offsets (default: when :func:`needs_int64`)."""
    import triton

    from pgolf.kernels._triton import matmul_kernel

    (M, K), N = a.shape, b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    bm, bn, bk = blocks
    acc, precision = _acc_and_precision(a.dtype)
    wide = needs_int64(a, b, c) if wide is None else wide
    matmul_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
        a, b, c, c if pre is None else pre, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), slope,
        ACTIVATE=pre is not None, ACC=acc, PRECISION=precision, BM=bm, BN=bn, BK=bk, WIDE=wide,
    )  # fmt: skip
    return c


@torch.library.custom_op("pgolf::up_activation", mutates_args=())
def _up_activation_op(x2: Tensor, w: Tensor, slope: float, bm: int, bn: int, bk: int) -> tuple[Tensor, Tensor]:
    """(h, pre) of x2 (M, K) and w (N, K) through the Triton kernel."""
    pre = torch.empty(x2.shape[0], w.shape[0], device=x2.device, dtype=x2.dtype)
    h = _matmul(x2, w.t(), (bm, bn, bk), pre=pre, slope=slope)
    return h, pre


@torch.library.custom_op("pgolf::up_activation_backward", mutates_args=())
def _up_activation_backward_op(
    dh: Tensor, x2: Tensor, w: Tensor, pre: Tensor, slope: float, bm: int, bn: int, bk: int
) -> tuple[Tensor, Tensor]:
    """(dx2, dw) through the elementwise gradient kernel and the matmul kernel."""
    import triton

    from pgolf.kernels._triton import leaky_square_grad_kernel

    dh = dh.contiguous()
    dpre = torch.empty_like(pre)
    acc, _ = _acc_and_precision(pre.dtype)
    n = pre.numel()
    leaky_square_grad_kernel[(triton.cdiv(n, ELEMENTWISE_BLOCK),)](
        dh, pre, dpre, n, slope, ACC=acc, BLOCK=ELEMENTWISE_BLOCK, WIDE=n > INT32_LIMIT
    )
    return _matmul(dpre, w, (bm, bn, bk)), _matmul(dpre.t(), x2, (bm, bn, bk))


@_up_activation_op.register_fake
def _(x2: Tensor, w: Tensor, slope: float, bm: int, bn: int, bk: int) -> tuple[Tensor, Tensor]:
    shape = (x2.shape[0], w.shape[0])
    return x2.new_empty(shape), x2.new_empty(shape)


@_up_activation_backward_op.register_fake
def _(dh: Tensor, x2: Tensor, w: Tensor, pre: Tensor, slope: float, bm: int, bn: int, bk: int):
    return x2.new_empty(x2.shape), w.new_empty(w.shape)


def _up_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    x2, w, ctx.slope, *ctx.blocks = inputs
    ctx.save_for_backward(x2, w, output[1])
    ctx.mark_non_differentiable(output[1])


def _up_grad(ctx, dh: Tensor, _dpre: Tensor):
    x2, w, pre = ctx.saved_tensors
    dx, dw = _up_activation_backward_op(dh, x2, w, pre, ctx.slope, *ctx.blocks)
    return dx, dw, None, None, None, None


_up_activation_op.register_autograd(_up_grad, setup_context=_up_setup)


def fused_up_activation(
    x: Tensor, w: Tensor, slope: float, *, triton: bool | None = None, blocks: Blocks = CUDA_BLOCKS
) -> Tensor:
    """``leaky_relu(x W^T, slope)²`` for x (..., K) and w (N, K) of x's dtype -> (..., N).

    ``triton=None`` picks the Triton kernel for CUDA tensors and the eager reference otherwise; True forces the
    kernel (tests run it on CPU under Triton's interpreter), False forces eager."""
    if triton if triton is not None else x.is_cuda:
        h, _ = _up_activation_op(x.reshape(-1, x.shape[-1]), w, slope, *blocks)
        return h.view(*x.shape[:-1], w.shape[0])
    return eager_up_activation(x, w, slope)
