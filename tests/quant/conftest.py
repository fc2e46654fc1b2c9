"""Fixtures of the quantizer tests: training shards (with a validation shard, or a single train shard), and the toy
model quantized with AWQ-lite groups, Hadamard rotation and LQER everywhere."""

import numpy as np
import pytest

from pgolf.data import shards
from pgolf.quant.hessian import calibration_windows, collect_hessians, hessian_rows
from pgolf.quant.policy import decide
from pgolf.quant.quantize import quantize_state
from tests.helpers.quant import awq_calib, awq_quant_all, noisy_model


@pytest.fixture
def shard_dir(tmp_path):
    """Two training shards of ids 2..59 (BOS every 97 tokens) and a validation shard of id 63 only."""
    rng = np.random.default_rng(0)
    for i in range(2):
        train = rng.integers(2, 60, size=3000)
        train[::97] = 1
        shards.write_shard(tmp_path / f"train_{i:06d}.bin", train)
    shards.write_shard(tmp_path / "val_000000.bin", np.full(500, 63))  # a token that no training shard holds
    return tmp_path


@pytest.fixture(scope="module")
def one_shard_dir(tmp_path_factory):
    """One training shard of ids 2..59 (BOS every 97 tokens)."""
    path = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    train = rng.integers(2, 60, size=3000)
    train[::97] = 1
    shards.write_shard(path / "train_000000.bin", train)
    return path


@pytest.fixture(scope="module")
def quantized(one_shard_dir) -> dict:
    """The toy model quantized with 3 global AWQ-lite groups of 16 columns, Hadamard rotation and LQER everywhere."""
    model = noisy_model()
    hessians, tokens = collect_hessians(model, calibration_windows(one_shard_dir, awq_calib(), 0, 1), looped=True,
                                        doc_isolated=False)  # fmt: skip
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rows = hessian_rows(model, True, tokens)
    decisions = decide(model, awq_quant_all())
    entries, reports, chosen = quantize_state(state, hessians, decisions, awq_quant_all(top_k=3), rows)
    return {"state": state, "hessians": hessians, "rows": rows, "decisions": decisions, "entries": entries,
            "reports": reports, "chosen": chosen}  # fmt: skip
