"""pgolf.kernels.mlp: int64 offsets past int32, eager dispatch on CPU (and of the softcapped CE), the fused
MLP kernel (autotuned and with fixed tiles) against the eager reference on CUDA."""

import pytest
import torch

from pgolf.kernels.mlp import fused_up_activation
from pgolf.kernels.softcap_ce import softcapped_cross_entropy
from tests.helpers.kernels import check_mlp

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


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
@pytest.mark.parametrize("tiling", [None, (64, 64, 32, 3)], ids=["autotuned", "fixed"])
def test_mlp_kernel_matches_eager_cuda(dtype, slope, tiling):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    check_mlp((4, 100, 96), 200, slope, dtype, "cuda", tiling, tol)
