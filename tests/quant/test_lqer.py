"""pgolf.quant.lqer: the low-rank correction lowers the error, its packs (asym, sym, group 32) round-trip, the
top-k choice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from pgolf.quant import lqer
from pgolf.quant.formats import Entry, dequantize, from_tensors, lowrank_dense, to_tensors
from tests.helpers.quant import quantized_matrix


@pytest.mark.parametrize("mode", ["asym", "sym"])
def test_lqer_lowers_frobenius_error(mode: str) -> None:
    w, fmt = quantized_matrix()
    e = lqer.quantization_residual(w, fmt)
    a, b = lqer.low_rank_residual(e, 4)
    assert a.shape == (64, 4) and b.shape == (4, 128)
    assert torch.allclose(b @ b.T, torch.eye(4), atol=1e-5)  # singular values folded into A
    corr = lqer.pack_asym(a, b, 64) if mode == "asym" else lqer.pack_sym(a, b, 4)
    base = Entry("w", (64, 128), "float32", fmt, None)
    fixed = Entry("w", (64, 128), "float32", fmt, corr)
    assert torch.allclose(dequantize(fixed), dequantize(base) + lowrank_dense(corr), atol=1e-5)
    assert (w - dequantize(fixed)).norm() < 0.99 * (w - dequantize(base)).norm()


def test_lqer_pack_ranges_and_round_trip() -> None:
    w, fmt = quantized_matrix()
    a, b = lqer.low_rank_residual(lqer.quantization_residual(w, fmt), 4)
    asym = lqer.pack_asym(a, b, 64)
    assert set(asym.a_q.unique().tolist()) <= {-2, -1, 0, 1} and asym.a_scale.shape == ()
    assert asym.b_q.min().item() >= -8 and asym.b_q.max().item() <= 7 and asym.b_scale.shape == (8,)
    sym = lqer.pack_sym(a, b, 4)
    assert sym.a_q.abs().max().item() == 7 and sym.a_scale.shape == (64,) and sym.b_scale.shape == (4,)
    for corr in (asym, sym):
        entry = Entry("m", (64, 128), "float32", fmt, corr)
        back = from_tensors(*to_tensors([entry]))[0].lqer
        assert back is not None and (back.mode, back.group) == (corr.mode, corr.group)
        for field in ("a_q", "a_scale", "b_q", "b_scale"):
            assert torch.equal(getattr(back, field), getattr(corr, field))
    with pytest.raises(ValueError, match="not a multiple of 64"):
        lqer.pack_asym(a[:, :3], b[:3, :100], 64)


def test_lqer_group_32_doubles_the_b_scales_and_round_trips() -> None:
    """#2060's retune: rank 2, B in groups of 32 (twice the scales of 64), through the manifest and back."""
    w, fmt = quantized_matrix()
    a, b = lqer.low_rank_residual(lqer.quantization_residual(w, fmt), 2)
    g64, g32 = lqer.pack_asym(a, b, 64), lqer.pack_asym(a, b, 32)
    assert (g64.b_scale.numel(), g32.b_scale.numel()) == (2 * 128 // 64, 2 * 128 // 32)
    groups = b.reshape(-1, 32)
    expected = np.float16(groups.abs().amax(dim=1).double().numpy() / 7.5)
    assert g32.group == 32 and np.array_equal(g32.b_scale.numpy(), expected)
    b_hat = (g32.b_q.float().reshape(-1, 32) * g32.b_scale.float()[:, None]).reshape(b.shape)
    # half a step at most (a group's positive max sits at 7.5 steps, clamped to 7; the fp16 scale adds < 1%)
    assert ((b - b_hat).abs().reshape(-1, 32) <= 0.51 * g32.b_scale.float()[:, None]).all()
    assert torch.allclose(lowrank_dense(g32), (g32.a_q.float() * g32.a_scale.float()) @ b_hat)
    entry = Entry("m", (64, 128), "float32", fmt, g32)
    tensors, manifest = to_tensors([entry])
    assert tensors["m.lqer.b_scale"].shape == (8,) and manifest["entries"][0]["lqer"] == {"mode": "asym", "group": 32}
    back = from_tensors(load(save(tensors)), json.loads(json.dumps(manifest)))[0]
    assert back.lqer is not None and back.lqer.group == 32 and torch.equal(dequantize(back), dequantize(entry))


def test_select_top_k() -> None:
    errors = {"b": 2.0, "a": 2.0, "c": 5.0, "d": 1.0}
    assert lqer.select_top_k(errors, 3) == ["c", "a", "b"]
    assert lqer.select_top_k(errors, 10) == ["c", "a", "b", "d"]
    assert lqer.select_top_k(errors, 0) == []
