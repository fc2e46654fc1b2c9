"""pgolf.quant.gptq (CPU): SDClip scales, RTN (row-max and percentile-clipped), GPTQ (act order, dead columns,
AWQ-lite's finer column groups against a float64 reference), the H^-1 factor (reverse Cholesky, #2054), the
error measures, int8 gate rows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load

from pgolf.errors import PgolfError
from pgolf.quant import formats, gptq
from pgolf.quant.gptq import (
    clip_range,
    gptq_quantize,
    hessian_error,
    inverse_upper_factor,
    quantize_gate_int8_row,
    relative_error,
    rtn_quantize,
    rtn_rowmax_scales,
    sdclip_scales,
)
from tests.helpers.common import GOLDEN
from tests.helpers.quant import K, correlated_hessian, dense, gen, outlier_inputs

# ---- scales and RTN ----


def test_sdclip_scales_hand_case() -> None:
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.5, 0.0, -0.5, 2.0], [0.0, 0.0, 0.0, 0.0]])
    s = sdclip_scales(w, K, 6)
    assert s.dtype == torch.float16
    for i, row in enumerate(w.double().numpy()):
        expected = np.float16(max(K * row.std(ddof=1) / 31, 1e-10))
        if i < 2:
            assert s[i].item() == float(expected)
    assert s[0].item() == float(np.float16(K * np.sqrt(4 / 3) / 31))
    assert s[2].item() > 0  # an all-zero row keeps a usable (non-zero) scale


def test_rtn_rounds_half_to_even_and_rowmax_scales() -> None:
    s = torch.tensor([1.0], dtype=torch.float16)
    q = rtn_quantize(torch.tensor([[0.5, 1.5, 2.5, -1.5, 100.0, -100.0]]), s, 6)
    assert q.tolist() == [[0, 2, 2, -2, 31, -31]]
    w = torch.tensor([[3.1, -6.2], [0.0, 0.01]])
    s = rtn_rowmax_scales(w, 6)
    assert s[0].item() == float(np.float16(6.2 / 31)) and s[1].item() == float(np.float16(1 / 31))
    assert rtn_quantize(w, s, 6)[0].abs().max().item() == 31


@pytest.mark.parametrize("bits", [5, 6, 7, 8])
def test_gptq_values_stay_in_clip_range(bits: int) -> None:
    w = torch.randn(32, 128, generator=gen(bits)) * 3
    w[0, 5] = 500.0  # an outlier far past the clip
    q = gptq_quantize(w, correlated_hessian(128), sdclip_scales(w, 4.0, bits), bits, block_size=32)
    c = clip_range(bits)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert q.min().item() >= -c and q.max().item() <= c
    assert q.abs().max().item() == c


@pytest.mark.parametrize(("bits", "percentile"), [(8, 99.99984), (8, 90.0), (6, 100.0)])
def test_rtn_percentile_scales_match_numpy(bits, percentile):
    w = torch.randn(16, 300, generator=torch.Generator().manual_seed(1)) * 3
    w[3, 7] = 40.0  # an outlier the clip cuts
    c = 2 ** (bits - 1) - 1
    clip = np.quantile(np.abs(w.numpy().astype(np.float64)), percentile / 100, axis=1)
    expected = np.maximum(clip / c, 1 / c).astype(np.float16)
    scales = gptq.rtn_percentile_scales(w, bits, percentile)
    assert np.allclose(scales.numpy().astype(np.float32), expected.astype(np.float32), rtol=1e-3)
    q = gptq.rtn_quantize(w, scales, bits).numpy()
    ref = np.clip(np.round(w.numpy() / scales.float().numpy()[:, None]), -c, c)
    assert np.array_equal(q, ref) and q.min() >= -c
    if percentile == 100.0:
        assert torch.equal(scales, gptq.rtn_rowmax_scales(w, bits))


def test_rtn_percentile_rejects_out_of_range():
    with pytest.raises(ValueError, match="rtn_clip_percentile"):
        gptq.rtn_percentile_scales(torch.ones(2, 2), 8, 0.0)


# ---- GPTQ ----


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_identity_hessian_equals_rtn(act_order: bool) -> None:
    w = torch.randn(48, 200, generator=gen(2))
    s = sdclip_scales(w, K, 6)
    q = gptq_quantize(w, torch.eye(200), s, 6, block_size=64, act_order=act_order)
    assert torch.equal(q, rtn_quantize(w, s, 6))


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_gptq_beats_rtn_on_correlated_hessian(bits: int) -> None:
    w = torch.randn(64, 256, generator=gen(3))
    h = correlated_hessian(256)
    s = sdclip_scales(w, K, bits)
    err_gptq = hessian_error(w - dense(gptq_quantize(w, h, s, bits, block_size=64), s), h)
    err_rtn = hessian_error(w - dense(rtn_quantize(w, s, bits), s), h)
    assert err_gptq < 0.9 * err_rtn


def test_gptq_act_order_is_a_column_permutation_and_block_size_only_implementation() -> None:
    w = torch.randn(16, 96, generator=gen(4))
    spread = torch.rand(96, generator=gen(15)) * 3 + 0.25  # input channels of very different energy
    h = correlated_hessian(96) * torch.outer(spread, spread)
    s = sdclip_scales(w, K, 6)
    # Act order is plain GPTQ over the columns taken by decreasing H_jj, with the codes put back in place.
    perm = torch.argsort(h.diagonal(), descending=True)
    q_act = gptq_quantize(w, h, s, 6, block_size=32, act_order=True)
    q_manual = gptq_quantize(w[:, perm], h[perm][:, perm], s, 6, block_size=32, act_order=False)
    assert torch.equal(q_act, q_manual[:, torch.argsort(perm)])
    assert not torch.equal(q_act, gptq_quantize(w, h, s, 6, block_size=32, act_order=False))
    q_small = gptq_quantize(w, h, s, 6, block_size=16)
    q_whole = gptq_quantize(w, h, s, 6, block_size=96)
    # Lazy block updates are a reordering of the same arithmetic: at most a rare rounding-boundary flip.
    assert (q_small != q_whole).float().mean().item() < 0.01


def test_gptq_dead_columns() -> None:
    cols = 64
    w = torch.randn(16, cols, generator=gen(5))
    dead = torch.zeros(cols, dtype=torch.bool)
    dead[[3, 17, 40]] = True
    s = sdclip_scales(w, K, 6)
    # Diagonal H: live columns get no error feedback, so they are exactly RTN; dead inputs are zeroed (q = RTN(0) = 0).
    h_diag = torch.diag(torch.rand(cols, generator=gen(6)) + 0.5)
    h_diag[dead, dead] = 0.0
    q = gptq_quantize(w, h_diag, s, 6)
    assert torch.equal(q[:, ~dead], rtn_quantize(w, s, 6)[:, ~dead])
    assert (q[:, dead] == 0).all()
    # Correlated H with dead rows/columns: finite, zero on dead columns, still better than RTN on the live inputs.
    h = correlated_hessian(cols)
    h[dead] = 0.0
    h[:, dead] = 0.0
    q = gptq_quantize(w, h, s, 6)
    assert (q[:, dead] == 0).all()
    assert hessian_error(w - dense(q, s), h) < hessian_error(w - dense(rtn_quantize(w, s, 6), s), h)


def test_gptq_errors_are_clear() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(ValueError, match=r"\(4, 8\)"):
        gptq_quantize(w, torch.eye(7), sdclip_scales(w, K, 6), 6)
    bad = -torch.eye(8)
    bad[0, 0] = 5.0
    with pytest.raises(PgolfError, match=r"shape \(4, 8\).*damping"):
        gptq_quantize(w, bad, sdclip_scales(w, K, 6), 6)
    with pytest.raises(ValueError, match="bits"):
        clip_range(9)
    with pytest.raises(PgolfError, match=r"shape \(4, 8\).*damping"):
        gptq_quantize(w, bad, sdclip_scales(w, K, 6), 6, inverse="reverse_cholesky")
    with pytest.raises(ValueError, match="unknown GPTQ inverse method 'qr'"):
        inverse_upper_factor(torch.eye(3), "qr")


# ---- GPTQ on AWQ-lite's finer column groups ----


def _reference_gptq(w: torch.Tensor, h: torch.Tensor, steps: torch.Tensor, limits: torch.Tensor) -> torch.Tensor:
    """Textbook GPTQ in float64, one column at a time in the given order, column j on step steps[:, j] and range
    ±limits[j]; H^-1 = U^T U from a plain inverse."""
    h = h.double().clone()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    work, q = w.double().clone(), torch.zeros_like(w, dtype=torch.float64)
    for j in range(w.shape[1]):
        q[:, j] = torch.clamp(torch.round(work[:, j] / steps[:, j]), -limits[j], limits[j])
        err = (work[:, j] - q[:, j] * steps[:, j]) / u[j, j]
        work[:, j:] -= err[:, None] * u[j, j:][None, :]
    return q


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_with_groups_matches_a_float64_reference(act_order):
    """Blocks of 48 against 64-column groups (a group straddles two blocks); with act-order both run in the
    order of decreasing diag(H)."""
    w = torch.randn(24, 192, generator=gen(8))
    h = outlier_inputs(192)
    s, s_hi = gptq.sdclip_scales(w, 11.5, 6), gptq.sdclip_scales(w, 11.5, 8)
    p = formats.ProtectedGroups((64,), 64, s_hi, 8)
    q = gptq.gptq_quantize(w, h, s, 6, block_size=48, act_order=act_order, protected=p)
    mask = p.columns(192)
    steps = torch.where(mask, s_hi.double()[:, None], s.double()[:, None])
    limits = torch.where(mask, 127.0, 31.0).double()
    damped = h.diagonal() + 0.01 * h.diagonal().mean()
    perm = torch.argsort(damped, descending=True) if act_order else torch.arange(192)
    ref = torch.empty(24, 192, dtype=torch.float64)
    ref[:, perm] = _reference_gptq(w[:, perm], h[perm][:, perm], steps[:, perm], limits[perm])
    assert q[:, mask].abs().max() > 31 and (q.double() - ref).abs().max() <= 1
    assert (q.double() != ref).float().mean() < 0.01  # fp32 vs fp64 only flips codes that sit on a rounding tie


def test_gptq_without_groups_is_unchanged_and_rejects_a_coarser_grid():
    w = torch.randn(16, 128, generator=gen(6))
    h = outlier_inputs(128)
    s = gptq.sdclip_scales(w, 11.5, 6)
    assert torch.equal(gptq.gptq_quantize(w, h, s, 6, protected=None), gptq.gptq_quantize(w, h, s, 6))
    coarse = formats.ProtectedGroups((0,), 64, gptq.sdclip_scales(w, 11.5, 5), 5)
    with pytest.raises(ValueError, match="more than 6 bits"):
        gptq.gptq_quantize(w, h, s, 6, protected=coarse)


# ---- the H^-1 factor: chol -> inverse -> chol, or one reverse Cholesky (#2054) ----


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("n", [1, 7, 96, 300])
def test_reverse_cholesky_gives_the_same_factor_in_float64(n: int) -> None:
    """Both read H's lower triangle: the fp32 X^T X here is symmetric only up to rounding (n = 7: by 6e-8), and the
    reverse path must still give the Cholesky path's factor, not that of the upper triangle (3e-7 away there)."""
    h = correlated_hessian(n, n=4 * n + 8).double()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    u = inverse_upper_factor(h, "cholesky")
    r = inverse_upper_factor(h, "reverse_cholesky")
    assert r.dtype == torch.float64 and torch.equal(r, r.triu()) and (r.diagonal() > 0).all()
    assert _rel(r, u) < 1e-10
    assert _rel(r.T @ r, torch.linalg.inv(h.tril() + h.tril(-1).T)) < 1e-10


def test_reverse_cholesky_gives_the_golden_gptq_codes() -> None:
    """The record's int6 and int7 codes (tests/golden) come out identical with the reverse factor in float32."""
    gq = load((GOLDEN / "gptq.safetensors").read_bytes())
    for key, clip, bits, w, h in (("int6_mlp", 11.5, 6, "w", "hessian"), ("int6_attn", 13.0, 6, "w", "hessian"),
                                  ("emb", 14.0, 7, "emb/w", "emb/hessian")):  # fmt: skip
        s = sdclip_scales(gq[w], clip, bits)
        q = gptq_quantize(gq[w], gq[h], s, bits, inverse="reverse_cholesky")
        assert torch.equal(q, gq[f"{key}/q"]), (key, int((q != gq[f"{key}/q"]).sum()))


def test_error_measures() -> None:
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    w_hat = w + torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    h = torch.tensor([[2.0, 1.0], [1.0, 3.0]])
    assert hessian_error(w - w_hat, h) == pytest.approx(2.0)
    assert relative_error(w - w_hat, w) == pytest.approx(1 / 30**0.5)
    assert relative_error(torch.zeros(2, 2), torch.zeros(2, 2)) == 0.0  # an all-zero matrix is stored exactly


# ---- int8 gate rows ----


def test_gate_int8_row() -> None:
    w = torch.randn(8, 12, generator=gen(7))
    w[3] = 0.0
    gate = quantize_gate_int8_row(w)
    assert gate.q.dtype == torch.int8 and gate.scale.dtype == torch.float16
    assert gate.q.abs().max().item() <= 127 and gate.q.abs().max().item() >= 126
    err = (w - dense(gate.q, gate.scale)).abs()
    assert (err <= gate.scale.float()[:, None] / 2 + 1e-6).all()
    assert (gate.q[3] == 0).all()
