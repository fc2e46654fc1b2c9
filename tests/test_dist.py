"""pgolf.dist: host batches reach the GPU through pinned memory."""

import numpy as np
import pytest
import torch

from pgolf.dist import to_device

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_dynamo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need CUDA")
def test_host_batches_reach_the_gpu_through_pinned_memory():
    batch = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = to_device(batch, torch.device("cuda"))
    assert got.is_cuda and torch.equal(got.cpu(), torch.from_numpy(batch))
