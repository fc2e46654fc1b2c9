"""pgolf.kernels.softcap_ce: the fused softcapped cross-entropy against the eager reference on CUDA."""

import pytest
import torch

from tests.helpers.kernels import check_ce

pytest.importorskip("triton")
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs CUDA")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcap_ce_kernel_matches_eager_cuda(dtype):
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-5, atol=1e-5)
    check_ce(37, 3000, dtype, "cuda", 1024, tol)
