"""The fused Triton kernels against their eager references, forward and backward (on CPU these run under Triton's
interpreter, in a fresh process: see tests/kernels/test_triton.py)."""

from __future__ import annotations

import torch

from pgolf.kernels.mlp import eager_up_activation, fused_up_activation
from pgolf.kernels.softcap_ce import eager_softcapped_ce, softcapped_cross_entropy

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def check_mlp(shape, n_out, slope, dtype, device, blocks, tol):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()
    w = (torch.randn(n_out, shape[-1], generator=g, dtype=dtype) / shape[-1] ** 0.5).to(device).requires_grad_()
    h = fused_up_activation(x, w, slope, triton=True, blocks=blocks)
    dh = torch.randn(h.shape, generator=g, dtype=dtype).to(device)
    grads = torch.autograd.grad(h, (x, w), dh)
    ref = eager_up_activation(x, w, slope)
    ref_grads = torch.autograd.grad(ref, (x, w), dh)
    for got, want in zip((h, *grads), (ref, *ref_grads), strict=True):
        torch.testing.assert_close(got, want, **tol)


def check_ce(rows, vocab, dtype, device, block_v, tol):
    g = torch.Generator().manual_seed(0)
    z = (40 * torch.randn(rows, vocab, generator=g, dtype=dtype)).to(device).requires_grad_()
    y = torch.randint(0, vocab, (rows,), generator=g).to(device)
    y[1] = -100  # ignored row: loss 0, no gradient
    loss = softcapped_cross_entropy(z, y, 30.0, triton=True, block_v=block_v)
    assert loss.dtype == torch.promote_types(dtype, torch.float32)
    gl = torch.rand(rows, generator=g, dtype=loss.dtype).to(device)
    (dz,) = torch.autograd.grad(loss, z, gl)
    ref = eager_softcapped_ce(z, y, 30.0)
    (ref_dz,) = torch.autograd.grad(ref, z, gl)
    torch.testing.assert_close(loss, ref, **tol)
    torch.testing.assert_close(dz, ref_dz, **tol)


def check_wide():
    """The int64-offset variants (taken past 2^31 elements) compute what the int32 ones do."""
    import triton
    import triton.language as tl

    from pgolf.kernels._triton import leaky_square_grad_kernel
    from pgolf.kernels.mlp import _matmul

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(21, 20, generator=g), torch.randn(20, 37, generator=g)
    pre = torch.empty(21, 37)
    narrow = _matmul(a, b, (16, 16, 16), pre=pre, slope=0.5, wide=False)
    wide_pre = torch.empty(21, 37)
    wide = _matmul(a, b, (16, 16, 16), pre=wide_pre, slope=0.5, wide=True)
    assert torch.equal(narrow, wide) and torch.equal(pre, wide_pre)
    dh = torch.randn(21, 37, generator=g)
    outs = []
    for flag in (False, True):
        out = torch.empty_like(pre)
        leaky_square_grad_kernel[(triton.cdiv(pre.numel(), 256),)](
            dh, pre, out, pre.numel(), 0.5, ACC=tl.float32, BLOCK=256, WIDE=flag
        )
        outs.append(out)
    assert torch.equal(*outs)


def check_compiled():
    """Both kernels are custom ops: schema, fake impls and autograd pass ``opcheck``, and a fullgraph-compiled
    function of both equals the eager references in value and gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(21, 20, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 20, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 37, (21,), generator=g)
    torch.library.opcheck(torch.ops.pgolf.up_activation.default, (x, w, 0.5, 16, 16, 16))
    torch.library.opcheck(torch.ops.pgolf.softcapped_ce.default, (x @ w.T, y, 30.0, 32))

    def fused(x, w, y):
        h = fused_up_activation(x, w, 0.5, triton=True, blocks=(16, 16, 16))
        return softcapped_cross_entropy(h, y, 30.0, triton=True, block_v=32).sum()

    out = torch.compile(fused, fullgraph=True, backend="aot_eager")(x, w, y)
    ref = eager_softcapped_ce(eager_up_activation(x, w, 0.5), y, 30.0).sum()
    for got, want in zip((out, *torch.autograd.grad(out, (x, w))), (ref, *torch.autograd.grad(ref, (x, w))),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, **TOL[torch.float64])
