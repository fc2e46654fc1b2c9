"""pgolf.eval.chunk_sgd: a zero learning rate scores like the sliding mode."""

import numpy as np
import pytest

from tests.helpers.config import eval_cfg
from tests.helpers.eval import random_texts, recorded, text_val, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chunk_sgd_with_zero_lr_equals_sliding():
    val = text_val(random_texts(6, 5, 60, seed=5))
    cfg = eval_cfg(chunk_sgd={"lr": 0.0})
    _, chunk = recorded("chunk_sgd", tiny_model(), val, cfg)
    _, sliding = recorded("sliding", tiny_model(), val, cfg)
    np.testing.assert_allclose(chunk.nats[1:], sliding.nats[1:], rtol=0, atol=1e-5)
