"""Fused softcapped cross-entropy, per token (the record's, reduction none: the caller reduces).

Forward: one Triton program per row streams the vocab in blocks, keeping an online max and sum-exp of the
softcapped logits (as ``2c sigmoid(2x/c) = c tanh(x/c) + c``; the constant cancels), and writes the row's loss and
logsumexp. The softcapped logits are never materialised. Saved for backward: the logits, targets and logsumexp.
Backward: one pass per row writes ``dx = g (softmax(c tanh(x/c)) - onehot) (1 - tanh²(x/c))`` in the logits' dtype.
Negative targets (``ignore_index=-100``) give loss 0 and no gradient, like ``F.cross_entropy``.

The eager path (CPU, or ``triton=False``) is the reference: ``F.cross_entropy(c tanh(x/c), y, reduction="none")``
in fp32 at least.

Both directions are custom ops (``pgolf::softcapped_ce``, ``pgolf::softcapped_ce_backward``) with fake
implementations, so a compiled model treats them as opaque calls and stays one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CUDA_BLOCK_V = 1024


def eager_softcapped_ce(logits: Tensor, targets: Tensor, softcap: float) -> Tensor:
    z = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(z.to(torch.promote_types(z.dtype, torch.float32)), targets, reduction="none")


def _acc(dtype: torch.dtype):
    import triton.language as tl

    return tl.float64 if dtype == torch.float64 else tl.float32


@torch.library.custom_op("pgolf::softcapped_ce", mutates_args=())
def _softcapped_ce_op(logits: Tensor, targets: Tensor, softcap: float, block_v: int) -> tuple[Tensor, Tensor]:
    """(per-row nats, per-row log-sum-exp of the capped logits) through the forward kernel."""
    from pgolf.kernels._triton import softcap_ce_fwd_kernel

    x = logits.contiguous()
    rows, V = x.shape
    loss = torch.empty(rows, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32))
    lse = torch.empty_like(loss)
    softcap_ce_fwd_kernel[(rows,)](x, targets, loss, lse, V, x.stride(0), softcap, ACC=_acc(x.dtype), BLOCK_V=block_v)
    return loss, lse


@torch.library.custom_op("pgolf::softcapped_ce_backward", mutates_args=())
def _softcapped_ce_backward_op(
    grad: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, softcap: float, block_v: int
) -> Tensor:
    from pgolf.kernels._triton import softcap_ce_bwd_kernel

    x = logits.contiguous()
    rows, V = x.shape
    dx = torch.empty_like(x)
    softcap_ce_bwd_kernel[(rows,)](
        x, targets, lse, grad.contiguous(), dx, V, x.stride(0), dx.stride(0), softcap, ACC=_acc(x.dtype),
        BLOCK_V=block_v,
    )  # fmt: skip
    return dx


@_softcapped_ce_op.register_fake
def _(logits: Tensor, targets: Tensor, softcap: float, block_v: int) -> tuple[Tensor, Tensor]:
    out = logits.new_empty(logits.shape[0], dtype=torch.promote_types(logits.dtype, torch.float32))
    return out, torch.empty_like(out)


@_softcapped_ce_backward_op.register_fake
def _(grad: Tensor, logits: Tensor, targets: Tensor, lse: Tensor, softcap: float, block_v: int) -> Tensor:
    return logits.new_empty(logits.shape)


def _ce_setup(ctx, inputs: tuple, output: tuple[Tensor, Tensor]) -> None:
    logits, targets, ctx.softcap, ctx.block_v = inputs
    ctx.save_for_backward(logits, targets, output[1])
    ctx.mark_non_differentiable(output[1])


def _ce_grad(ctx, grad: Tensor, _dlse: Tensor):
    logits, targets, lse = ctx.saved_tensors
    return _softcapped_ce_backward_op(grad, logits, targets, lse, ctx.softcap, ctx.block_v), None, None, None


_softcapped_ce_op.register_autograd(_ce_grad, setup_context=_ce_setup)


def softcapped_cross_entropy(
    logits: Tensor, targets: Tensor, softcap: float, *, triton: bool | None = None, block_v: int = CUDA_BLOCK_V
) -> Tensor:
    """Per-row nats of ``cross_entropy(softcap * tanh(logits / softcap), targets)`` for logits (N, V) and integer
    targets (N,) -> (N,) in fp32 at least. ``triton=None`` picks the kernel for CUDA tensors and the eager
    reference otherwise; True forces the kernel (tests run it under Triton's interpreter), False forces eager."""
    if triton if triton is not None else logits.is_cuda:
        return _softcapped_ce_op(logits, targets, softcap, block_v)[0]
    return eager_softcapped_ce(logits, targets, softcap)
