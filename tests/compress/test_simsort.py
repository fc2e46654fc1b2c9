"""pgolf.compress.simsort: the similarity order is the greedy L1 chain, and its inverse restores the rows."""

import numpy as np
import pytest
import torch

from pgolf.compress.simsort import inverse, similarity_order

pytest.importorskip("constriction")  # the guards of its former file (tests/test_compress.py)
pytest.importorskip("zstandard")
pytest.importorskip("hypothesis")


def _greedy_reference(q: np.ndarray) -> list[int]:
    q = q.astype(np.float64)
    used, order = {0}, [0]
    for _ in range(len(q) - 1):
        dist = np.abs(q - q[order[-1]]).sum(1)
        dist[list(used)] = np.inf
        order.append(int(np.argmin(dist)))
        used.add(order[-1])
    return order


@pytest.mark.parametrize("shape", [(1, 4), (37, 5), (200, 16)])
def test_similarity_order_is_the_greedy_l1_chain(shape):
    q = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.int8)
    order = similarity_order(q)
    assert order.tolist() == _greedy_reference(q.numpy())
    assert torch.equal(q[torch.from_numpy(order)][torch.from_numpy(inverse(order))], q)
