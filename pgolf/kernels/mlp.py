"""Fused MLP up-projection ``h = leaky_relu(x W^T, slope)²`` (the record's kernel as math, written for any CUDA GPU).

One Triton matmul kernel (:func:`pgolf.kernels._triton.matmul_kernel`) serves all three products, each with its
fusion:

- forward ``h = leaky(x W^T)²``: the epilogue stores ``pre = x W^T`` (rounded to x's dtype) and ``h`` computed from
  the rounded pre. Saved for backward: x, W and pre (nothing else).
- backward ``dx = dpre W`` and ``dW = dpre^T x`` with ``dpre = dh * phi'(pre)``, ``phi'(p) = 2p (p > 0), 2 slope² p``:
  phi' is applied while loading the A operand (dh, and dh^T for dW, read with pre at the same offsets), so dpre is
  never written to memory and there is no elementwise pass between the GEMMs. Each of the two GEMMs reads dh and
  pre (4 MN reads) where a separate pass costs 3 MN (read dh, pre; write dpre) plus 2 MN reads of dpre, and one
  M x N buffer less is allocated. (The other place for phi' is the epilogue of the down projection's dh = dy W_down,
  which would need this op to own the down projection; it stays a plain ``Linear`` here, hooks and QAT included.)

Programs run on a 1-D grid in grouped order (GROUP_M row tiles per column sweep, so A and B tiles are reused from
L2). On CUDA the tiles come from ``@triton.autotune`` over a few configs keyed on (M, N, K, fusion, dtypes);
``tiling=(BM, BN, BK, GROUP_M)`` fixes them instead, which the tests do under Triton's CPU interpreter. Shapes need
not be multiples of the tiles (edges are masked).

The eager path (CPU, or ``triton=False``) is the reference: ``F.leaky_relu(F.linear(x, w), slope).square()``.
Whether the model's MLP takes the kernel at all is ``model.fused_mlp`` (:func:`pgolf.model.layers.use_fused_mlp`).

Offsets are int32 below 2^31 elements and int64 above (:func:`needs_int64`), where int32 would wrap.

Both directions are custom ops (``pgolf::up_activation``, ``pgolf::up_activation_backward``) with fake
implementations, so a compiled model treats them as opaque calls and stays one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Tiling = tuple[int, int, int, int]  # (BM, BN, BK, GROUP_M) of the matmul; tl.dot needs BM, BN, BK >= 16
INT32_LIMIT = 2**31 - 1


def eager_up_activation(x: Tensor, w: Tensor, slope: float) -> Tensor:
    return F.leaky_relu(F.linear(x, w), slope).square()


def _acc_and_precision(dtype: torch.dtype):
    import triton.language as tl

    acc = tl.float64 if dtype == torch.float64 else tl.float32
    return acc, "ieee" if dtype in (torch.float32, torch.float64) else "tf32"


def needs_int64(*tensors: Tensor) -> bool:
    """Whether some element offset of ``tensors`` (sum of (size - 1) * stride) passes int32: the kernels then
    address in int64 (``WIDE``); below it they keep the cheaper int32 arithmetic."""
    return any(sum((n - 1) * st for n, st in zip(t.shape, t.stride(), strict=True)) > INT32_LIMIT for t in tensors)


def _kernel_and_grid(M: int, N: int, tiling: Tiling | None) -> tuple:
    """The autotuned kernel with a grid read from the chosen config (``tiling`` None), or the plain kernel with
    ``tiling``'s tiles and grid; the grid is 1-D: one program per (BM, BN) tile."""
    import triton

    from pgolf.kernels._triton import matmul_kernel, matmul_kernel_autotuned

    if tiling is None:
        return matmul_kernel_autotuned, lambda meta: (triton.cdiv(M, meta["BM"]) * triton.cdiv(N, meta["BN"]),), {}
    bm, bn, bk, group_m = tiling
    return matmul_kernel, (triton.cdiv(M, bm) * triton.cdiv(N, bn),), dict(BM=bm, BN=bn, BK=bk, GROUP_M=group_m)


def _matmul(
    a: Tensor,
    b: Tensor,
    tiling: Tiling | None,
    aux: Tensor | None = None,
    slope: float = 0.0,
    *,
    activate: bool = False,
    wide: bool | None = None,
) -> Tensor:
    """a (M, K) @ b (K, N) with any strides. ``activate``: also write ``aux`` = pre and return leaky(pre)²;
    otherwise an ``aux`` given is pre of A's shape and strides, and the product is (a * phi'(aux)) @ b (see module
    doc). ``wide``: int64 offsets (default: when :func:`needs_int64`)."""
    (M, K), N = a.shape, b.shape[1]
    c = torch.empty(M, N, device=a.device, dtype=a.dtype)
    leaky_grad_a = aux is not None and not activate
    if leaky_grad_a and aux.stride() != a.stride():
        raise ValueError(f"pre's strides {aux.stride()} differ from dh's {a.stride()}")
    acc, precision = _acc_and_precision(a.dtype)
    wide = needs_int64(a, b, c) if wide is None else wide
    kernel, grid, tiles = _kernel_and_grid(M, N, tiling)
    kernel[grid](
        a, b, c, c if aux is None else aux, M, N, K,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1), slope,
        ACTIVATE=activate, LEAKY_GRAD_A=leaky_grad_a, ACC=acc, PRECISION=precision, WIDE=wide, **tiles,
    )  # fmt: skip
    return c


def _tiling(tiling: list[int]) -> Tiling | None:
    """A custom op's tiling argument: [] (autotuned) or [BM, BN, BK, GROUP_M]."""
    return tuple(tiling) if tiling else None


@torch.library.custom_op("pgolf::up_activation", mutates_args=())
def _up_activation_op(x2: Tensor, w: Tensor, slope: float, tiling: list[int]) -> tuple[Tensor, Tensor]:
    """(h, pre) of x2 (M, K) and w (N, K) through the Triton kernel."""
    pre = torch.empty(x2.shape[0], w.shape[0], device=x2.device, dtype=x2.dtype)
    h = _matmul(x2, w.t(), _tiling(tiling), pre, slope, activate=True)
    return h, pre


@torch.library.custom_op("pgolf::up_activation_backward", mutates_args=())
def _up_activation_backward_op(
    dh: Tensor, x2: Tensor, w: Tensor, pre: Tensor, slope: float, tiling: list[int]
) -> tuple[Tensor, Tensor]:
    """(dx2, dw): two matmuls whose A loads apply phi'(pre) to dh (dh and pre contiguous, so dh^T and pre^T share
    strides too)."""
    dh, pre, tiles = dh.contiguous(), pre.contiguous(), _tiling(tiling)
    return _matmul(dh, w, tiles, pre, slope), _matmul(dh.t(), x2, tiles, pre.t(), slope)


@_up_activation_op.register_fake
def _(x2: Tensor, w: Tensor, slope: float, tiling: list[int]) -> tuple[Tensor, Tensor]:
    shape = (x2.shape[0], w.shape[0])
    return x2.new_empty(shape), x2.new_empty(shape)


@_up_activation_backward_op.register_fake
def _(dh: Tensor, x2: Tensor, w: Tensor, pre: Tensor, slope: float, tiling: list[int]):
    return x2.new_empty(x2.shape), w.new_empty(w.shape)


def _up_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    x2, w, ctx.slope, ctx.tiling = inputs
    ctx.save_for_backward(x2, w, output[1])
    ctx.mark_non_differentiable(output[1])


def _up_grad(ctx, dh: Tensor, _dpre: Tensor):
    x2, w, pre = ctx.saved_tensors
    dx, dw = _up_activation_backward_op(dh, x2, w, pre, ctx.slope, ctx.tiling)
    return dx, dw, None, None


_up_activation_op.register_autograd(_up_grad, setup_context=_up_setup)


def fused_up_activation(
    x: Tensor, w: Tensor, slope: float, *, triton: bool | None = None, tiling: Tiling | None = None
) -> Tensor:
    """``leaky_relu(x W^T, slope)²`` for x (..., K) and w (N, K) of x's dtype -> (..., N).

    ``triton=None`` picks the Triton kernel for CUDA tensors and the eager reference otherwise; True forces the
    kernel (tests run it on CPU under Triton's interpreter, with a fixed ``tiling``), False forces eager.
    ``tiling`` None: autotuned tiles (CUDA only)."""
    if triton if triton is not None else x.is_cuda:
        h, _ = _up_activation_op(x.reshape(-1, x.shape[-1]), w, slope, list(tiling or ()))
        return h.view(*x.shape[:-1], w.shape[0])
    return eager_up_activation(x, w, slope)
