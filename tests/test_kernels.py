"""The fused Triton kernels against their eager references: on CPU through Triton's interpreter, and on CUDA when
there is one. TRITON_INTERPRET is read when a kernel is decorated, and another test may already have imported the
kernels in this process, so the interpreted checks run in a fresh Python with the variable set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pgolf.kernels.mlp import eager_up_activation, fused_up_activation
from pgolf.kernels.softcap_ce import eager_softcapped_ce, softcapped_cross_entropy

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def _check_mlp(shape, n_out, slope, dtype, device, blocks, tol):
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


def _check_ce(rows, vocab, dtype, device, block_v, tol):
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


_INTERPRETED = """
import torch
from test_kernels import TOL, _check_ce, _check_compiled, _check_mlp, _check_wide
for dtype in (torch.float32, torch.float64):
    for slope in (0.5, 0.3, 0.0):
        _check_mlp((3, 7, 20), 37, slope, dtype, "cpu", (16, 16, 16), TOL[dtype])  # M=21, N=37, K=20: ragged edges
    _check_ce(13, 100, dtype, "cpu", 32, TOL[dtype])  # V=100 over blocks of 32
_check_compiled()
_check_wide()
print("ok")
"""


def _check_wide():
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


def _check_compiled():
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


def _interpreter_broken() -> bool:
    """Triton < 3.6's interpreter converts 1-element arrays to Python scalars, which NumPy >= 2.4 refuses (a
    test-only problem: compiled kernels never run the interpreter)."""
    import numpy as np
    import triton

    def version(text: str) -> tuple[int, int]:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)

    return version(triton.__version__) < (3, 6) and version(np.__version__) >= (2, 4)


@pytest.mark.skipif(_interpreter_broken(), reason="Triton < 3.6's interpreter fails on NumPy >= 2.4")
def test_kernels_match_eager_under_the_interpreter():
    """Forward and backward of both kernels, float32 and float64, ragged shapes, in Triton's CPU interpreter; the
    custom ops under opcheck and torch.compile."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = Path(__file__).resolve().parent
    run = subprocess.run([sys.executable, "-c", _INTERPRETED], cwd=here, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_int64_offsets_are_taken_past_int32():
    from pgolf.kernels.mlp import needs_int64

    small = torch.empty_strided((98304, 2048), (2048, 1), device="meta")  # the record's MLP activation
    assert not needs_int64(small, small.t())
    assert needs_int64(torch.empty_strided((2**20 + 1, 2048), (2048, 1), device="meta"))
    assert needs_int64(torch.empty_strided((2, 3), (2**31, 1), device="meta"))  # a wide stride, few elements


def test_dispatch_is_eager_on_cpu():
    x, w = torch.randn(2, 5, 8), torch.randn(12, 8)
    ref = torch.nn.functional.leaky_relu(torch.nn.functional.linear(x, w), 0.5).square()
    assert torch.equal(fused_up_activation(x, w, 0.5), ref)
    z, y = 50 * torch.randn(6, 11), torch.randint(0, 11, (6,))
    ref_ce = torch.nn.functional.cross_entropy(30 * torch.tanh(z / 30), y, reduction="none")
    assert torch.equal(softcapped_cross_entropy(z, y, 30.0), ref_ce)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slope", [0.5, 0.0])
def test_mlp_kernel_matches_eager_cuda(dtype, slope):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    _check_mlp((4, 100, 96), 200, slope, dtype, "cuda", (64, 64, 32), tol)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcap_ce_kernel_matches_eager_cuda(dtype):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    _check_ce(37, 3000, dtype, "cuda", 1024, tol)
