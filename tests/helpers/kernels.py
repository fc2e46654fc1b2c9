"""The fused Triton kernels against their eager references, forward and backward (on CPU these run under Triton's
interpreter, in a fresh process: see tests/kernels/test_triton.py)."""

from __future__ import annotations

import torch

from pgolf.kernels.mlp import eager_up_activation, fused_up_activation
from pgolf.kernels.softcap_ce import eager_softcapped_ce, softcapped_cross_entropy

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def check_mlp(shape, n_out, slope, dtype, device, tiling, tol):
    """Forward and both gradients of the fused up-projection against eager (``tiling`` None: autotuned)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()
    w = (torch.randn(n_out, shape[-1], generator=g, dtype=dtype) / shape[-1] ** 0.5).to(device).requires_grad_()
    h = fused_up_activation(x, w, slope, triton=True, tiling=tiling)
    dh = torch.randn(h.shape, generator=g, dtype=dtype).to(device)
    grads = torch.autograd.grad(h, (x, w), dh)
    ref = eager_up_activation(x, w, slope)
    ref_grads = torch.autograd.grad(ref, (x, w), dh)
    for got, want in zip((h, *grads), (ref, *ref_grads), strict=True):
        torch.testing.assert_close(got, want, **tol)


def check_autotuned():
    """The autotuned kernel (the CUDA default), with each of its configs as the one chosen, matches eager on a shape
    ragged against every tile (M=300, N=150, K=40). The interpreter has no GPU clock to time configs by, so each
    config is offered alone (an autotuner with one config runs it untimed)."""
    from pgolf.kernels._triton import AUTOTUNE_CONFIGS, matmul_kernel_autotuned

    kernel = matmul_kernel_autotuned
    for config in AUTOTUNE_CONFIGS:
        kernel.configs = [config]
        kernel.cache.clear()
        check_mlp((3, 100, 40), 150, 0.3, torch.float64, "cpu", None, TOL[torch.float64])
    kernel.configs = AUTOTUNE_CONFIGS


def check_saved():
    """The fused forward saves x, W and pre for backward, nothing else."""
    x, w = torch.randn(21, 20, requires_grad=True), torch.randn(37, 20, requires_grad=True)
    shapes = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
        fused_up_activation(x, w, 0.5, triton=True, tiling=(16, 16, 16, 2))
    assert shapes == [(21, 20), (37, 20), (21, 37)], shapes


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


def check_grouped_order():
    """The kernel's programs visit the tiles in grouped order, each tile once, also when GROUP_M does not divide
    the row tiles (7 row tiles in groups of 3) or exceeds them."""
    from tests.helpers.tile_order import grouped_order, kernel_order

    for group_m in (1, 3, 8):
        order = kernel_order(7 * 16 - 5, 4 * 16 - 9, 16, 16, group_m)  # 7 x 4 tiles, ragged edges
        assert order == grouped_order(7, 4, group_m), (group_m, order)
    assert kernel_order(7 * 16, 4 * 16, 16, 16, 3)[:4] == [(0, 0), (1, 0), (2, 0), (0, 1)]


def check_wide():
    """The int64-offset variants (taken past 2^31 elements) compute what the int32 ones do, for both fusions."""
    from pgolf.kernels.mlp import _matmul

    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(37, 20, generator=g), torch.randn(20, 37, generator=g)
    tiling = (16, 16, 16, 2)
    outs = {}
    for wide in (False, True):
        pre = torch.empty(37, 37)
        h = _matmul(a, b, tiling, pre, 0.5, activate=True, wide=wide)
        outs[wide] = (h, pre, _matmul(h, b.t(), tiling, pre, 0.5, wide=wide))
    for narrow, wide in zip(outs[False], outs[True], strict=True):
        assert torch.equal(narrow, wide)


def check_compiled():
    """Both kernels are custom ops: schema, fake impls and autograd pass ``opcheck``, and a fullgraph-compiled
    function of both equals the eager references in value and gradient."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(21, 20, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(37, 20, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 37, (21,), generator=g)
    torch.library.opcheck(torch.ops.pgolf.up_activation.default, (x, w, 0.5, [16, 16, 16, 2]))
    torch.library.opcheck(torch.ops.pgolf.softcapped_ce.default, (x @ w.T, y, 30.0, 32))

    def fused(x, w, y):
        h = fused_up_activation(x, w, 0.5, triton=True, tiling=(16, 16, 16, 2))
        return softcapped_cross_entropy(h, y, 30.0, triton=True, block_v=32).sum()

    out = torch.compile(fused, fullgraph=True, backend="aot_eager")(x, w, y)
    ref = eager_softcapped_ce(eager_up_activation(x, w, 0.5), y, 30.0).sum()
    for got, want in zip((out, *torch.autograd.grad(out, (x, w))), (ref, *torch.autograd.grad(ref, (x, w))),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, **TOL[torch.float64])
