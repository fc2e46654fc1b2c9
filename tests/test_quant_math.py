"""Quantization math (CPU): SDClip scales, RTN, GPTQ, int8 gate rows, LQER packs, Hadamard rotation, formats."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load, save

from pgolf.errors import PgolfError
from pgolf.quant import hadamard, lqer
from pgolf.quant.formats import (
    Entry,
    GateInt8Row,
    LowRankCorrection,
    Passthrough,
    QuantizedMatrix,
    dequantize,
    from_tensors,
    lowrank_dense,
    to_tensors,
)
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

K = 12.85


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _correlated_hessian(cols: int, seed: int = 1, n: int = 1024) -> torch.Tensor:
    """H = X^T X / n for X = Z L, a random mixing of Gaussian inputs (strongly correlated columns)."""
    g = _gen(seed)
    z = torch.randn(n, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + 0.1 * torch.eye(cols)
    x = z @ mix
    return x.T @ x / n


def _dense(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.float()[:, None]


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
    w = torch.randn(32, 128, generator=_gen(bits)) * 3
    w[0, 5] = 500.0  # an outlier far past the clip
    q = gptq_quantize(w, _correlated_hessian(128), sdclip_scales(w, 4.0, bits), bits, block_size=32)
    c = clip_range(bits)
    assert q.dtype == torch.int8 and q.shape == w.shape
    assert q.min().item() >= -c and q.max().item() <= c
    assert q.abs().max().item() == c


# ---- GPTQ ----


@pytest.mark.parametrize("act_order", [True, False])
def test_gptq_with_identity_hessian_equals_rtn(act_order: bool) -> None:
    w = torch.randn(48, 200, generator=_gen(2))
    s = sdclip_scales(w, K, 6)
    q = gptq_quantize(w, torch.eye(200), s, 6, block_size=64, act_order=act_order)
    assert torch.equal(q, rtn_quantize(w, s, 6))


@pytest.mark.parametrize("bits", [4, 5, 6])
def test_gptq_beats_rtn_on_correlated_hessian(bits: int) -> None:
    w = torch.randn(64, 256, generator=_gen(3))
    h = _correlated_hessian(256)
    s = sdclip_scales(w, K, bits)
    err_gptq = hessian_error(w - _dense(gptq_quantize(w, h, s, bits, block_size=64), s), h)
    err_rtn = hessian_error(w - _dense(rtn_quantize(w, s, bits), s), h)
    assert err_gptq < 0.9 * err_rtn


def test_gptq_act_order_is_a_column_permutation_and_block_size_only_implementation() -> None:
    w = torch.randn(16, 96, generator=_gen(4))
    spread = torch.rand(96, generator=_gen(15)) * 3 + 0.25  # input channels of very different energy
    h = _correlated_hessian(96) * torch.outer(spread, spread)
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
    w = torch.randn(16, cols, generator=_gen(5))
    dead = torch.zeros(cols, dtype=torch.bool)
    dead[[3, 17, 40]] = True
    s = sdclip_scales(w, K, 6)
    # Diagonal H: live columns get no error feedback, so they are exactly RTN; dead inputs are zeroed (q = RTN(0) = 0).
    h_diag = torch.diag(torch.rand(cols, generator=_gen(6)) + 0.5)
    h_diag[dead, dead] = 0.0
    q = gptq_quantize(w, h_diag, s, 6)
    assert torch.equal(q[:, ~dead], rtn_quantize(w, s, 6)[:, ~dead])
    assert (q[:, dead] == 0).all()
    # Correlated H with dead rows/columns: finite, zero on dead columns, still better than RTN on the live inputs.
    h = _correlated_hessian(cols)
    h[dead] = 0.0
    h[:, dead] = 0.0
    q = gptq_quantize(w, h, s, 6)
    assert (q[:, dead] == 0).all()
    assert hessian_error(w - _dense(q, s), h) < hessian_error(w - _dense(rtn_quantize(w, s, 6), s), h)


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


# ---- the H^-1 factor: chol -> inverse -> chol, or one reverse Cholesky (#2054) ----


def _rel(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x - ref).norm() / ref.norm())


@pytest.mark.parametrize("n", [1, 7, 96, 300])
def test_reverse_cholesky_gives_the_same_factor_in_float64(n: int) -> None:
    """Both read H's lower triangle: the fp32 X^T X here is symmetric only up to rounding (n = 7: by 6e-8), and the
    reverse path must still give the Cholesky path's factor, not that of the upper triangle (3e-7 away there)."""
    h = _correlated_hessian(n, n=4 * n + 8).double()
    h.diagonal().add_(0.01 * h.diagonal().mean())
    u = inverse_upper_factor(h, "cholesky")
    r = inverse_upper_factor(h, "reverse_cholesky")
    assert r.dtype == torch.float64 and torch.equal(r, r.triu()) and (r.diagonal() > 0).all()
    assert _rel(r, u) < 1e-10
    assert _rel(r.T @ r, torch.linalg.inv(h.tril() + h.tril(-1).T)) < 1e-10


def test_reverse_cholesky_gives_the_golden_gptq_codes() -> None:
    """The record's int6 and int7 codes (tests/golden) come out identical with the reverse factor in float32."""
    gq = load((Path(__file__).parent / "golden" / "gptq.safetensors").read_bytes())
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
    w = torch.randn(8, 12, generator=_gen(7))
    w[3] = 0.0
    gate = quantize_gate_int8_row(w)
    assert gate.q.dtype == torch.int8 and gate.scale.dtype == torch.float16
    assert gate.q.abs().max().item() <= 127 and gate.q.abs().max().item() >= 126
    err = (w - _dense(gate.q, gate.scale)).abs()
    assert (err <= gate.scale.float()[:, None] / 2 + 1e-6).all()
    assert (gate.q[3] == 0).all()


# ---- LQER ----


def _quantized(bits: int = 4, seed: int = 8, rows: int = 64, cols: int = 128) -> tuple[torch.Tensor, QuantizedMatrix]:
    w = torch.randn(rows, cols, generator=_gen(seed))
    w[:, :4] += 3 * torch.randn(rows, 1, generator=_gen(seed + 1))  # a low-rank structure in the error
    s = sdclip_scales(w, K, bits)
    fmt = QuantizedMatrix(q=gptq_quantize(w, _correlated_hessian(cols), s, bits), scale=s, bits=bits, rotated=False)
    return w, fmt


@pytest.mark.parametrize("mode", ["asym", "sym"])
def test_lqer_lowers_frobenius_error(mode: str) -> None:
    w, fmt = _quantized()
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
    w, fmt = _quantized()
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
    w, fmt = _quantized()
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


# ---- Hadamard ----


def test_hadamard_matrix() -> None:
    for n in (1, 2, 8, 512):
        q = hadamard.hadamard_matrix(n)
        assert torch.allclose(q @ q.T, torch.eye(n), atol=1e-5)
        assert torch.equal(q, q.T)
    with pytest.raises(ValueError, match="power-of-2"):
        hadamard.hadamard_matrix(96)


def test_hadamard_rotation_identities() -> None:
    w = torch.randn(16, 64, generator=_gen(9))
    x = torch.randn(64, 5, generator=_gen(10))
    q = hadamard.hadamard_matrix(64)
    w_rot = hadamard.rotate_weight(w)
    assert torch.allclose(hadamard.unrotate_weight(w_rot), w, atol=1e-5)
    assert torch.allclose(w @ x, w_rot @ (q @ x), atol=1e-4)
    h = _correlated_hessian(64)
    # The H-weighted error is invariant: trace(E H E^T) = trace(E' H' E'^T).
    e = torch.randn(16, 64, generator=_gen(11))
    assert hessian_error(e, h) == pytest.approx(
        hessian_error(hadamard.rotate_weight(e), hadamard.rotate_hessian(h)), rel=1e-4
    )


def test_gptq_in_rotated_domain_dequantizes_close_to_w() -> None:
    w = torch.randn(32, 128, generator=_gen(12))
    w[:, 7] *= 20  # an outlier column, which rotation spreads out
    w_rot, h_rot = hadamard.rotate_weight(w), hadamard.rotate_hessian(_correlated_hessian(128))
    s = sdclip_scales(w_rot, K, 8)
    fmt = QuantizedMatrix(q=gptq_quantize(w_rot, h_rot, s, 8), scale=s, bits=8, rotated=True)
    a, b = lqer.low_rank_residual(lqer.quantization_residual(w_rot, fmt), 4)
    corr = lqer.pack_asym(a, b, 64)
    plain = dequantize(Entry("w", (32, 128), "float32", fmt, None))
    assert relative_error(w - plain, w) < 0.1
    assert torch.allclose(plain, hadamard.unrotate_weight(_dense(fmt.q, s)), atol=1e-5)
    fixed = dequantize(Entry("w", (32, 128), "float32", fmt, corr))
    expected = hadamard.unrotate_weight(_dense(fmt.q, s) + lowrank_dense(corr))
    assert torch.allclose(fixed, expected, atol=1e-5)


# ---- formats ----


def _embedding() -> torch.Tensor:
    return torch.randn(32, 16, generator=_gen(13)).to(torch.bfloat16)


def _all_entries() -> list[Entry]:
    w, fmt = _quantized(bits=7, rows=16, cols=64)
    corr = lqer.pack_asym(*lqer.low_rank_residual(lqer.quantization_residual(w, fmt), 2), 32)
    emb = _embedding()
    s = sdclip_scales(emb, 14.0, 7)
    emb_fmt = QuantizedMatrix(q=rtn_quantize(emb, s, 7), scale=s, bits=7, rotated=False)
    ctrl = torch.randn(3, 4, generator=_gen(14))
    return [
        Entry("blocks.0.mlp.fc.weight", (16, 64), "float32", fmt, corr),
        Entry("blocks.0.attn.c_q.weight", (16, 64), "float32", fmt, lqer.pack_sym(*lqer.low_rank_residual(w, 3), 4)),
        Entry("tok_emb.weight", (32, 16), "bfloat16", emb_fmt, None),
        Entry("blocks.0.attn_gate_w", (8, 12), "float32", quantize_gate_int8_row(torch.randn(8, 12)), None),
        Entry("resid_mix", (3, 4), "float32", Passthrough(ctrl.half(), "float32"), None),
        Entry("smear_lambda", (), "float32", Passthrough(torch.tensor(0.25), "float32"), None),
    ]


def test_formats_round_trip_exact_through_safetensors_and_json() -> None:
    entries = _all_entries()
    tensors, manifest = to_tensors(entries)
    assert "tok_emb.weight.q" in tensors and "blocks.0.mlp.fc.weight.lqer.b_scale" in tensors
    # Fresh tensors that own their storage: torch.save (and safetensors) write exactly these bytes, nothing shared.
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == len(tensors)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors.values())
    back = from_tensors(load(save(tensors)), json.loads(json.dumps(manifest)))
    assert [e.name for e in back] == [e.name for e in entries]
    for orig, new in zip(entries, back, strict=True):
        assert (new.shape, new.dtype, type(new.fmt)) == (orig.shape, orig.dtype, type(orig.fmt))
        assert torch.equal(dequantize(new), dequantize(orig))
        assert dequantize(new).dtype == getattr(torch, orig.dtype) and dequantize(new).shape == orig.shape
    assert back[0].fmt.bits == 7 and back[0].fmt.rotated is False and back[0].lqer.group == 32
    buf = io.BytesIO()
    torch.save(tensors, buf)  # the dict is also plain torch.save-able, and loads back without pickled code
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert list(loaded) == list(tensors)
    assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in tensors.items())
    for orig, new in zip(entries, from_tensors(loaded, manifest), strict=True):
        assert torch.equal(dequantize(new), dequantize(orig))


def test_dequantize_restores_dtype_and_shape() -> None:
    out = dequantize(_all_entries()[2])
    assert out.dtype == torch.bfloat16 and out.shape == (32, 16)
    assert relative_error(_embedding().float() - out.float(), _embedding()) < 0.1
    gate = dequantize(_all_entries()[3])
    assert gate.dtype == torch.float32 and gate.shape == (8, 12)
    scalar = dequantize(_all_entries()[5])
    assert scalar.shape == () and scalar.item() == 0.25


def test_manifest_errors() -> None:
    tensors, manifest = to_tensors(_all_entries())
    manifest["entries"][3]["format"]["kind"] = "gate_int4_col"
    with pytest.raises(ValueError, match="unknown quantized format kind 'gate_int4_col'"):
        from_tensors(tensors, manifest)
    _, manifest = to_tensors(_all_entries())
    del tensors["resid_mix.value"]
    with pytest.raises(ValueError, match="resid_mix"):
        from_tensors(tensors, manifest)
    with pytest.raises(ValueError, match="version"):
        from_tensors(tensors, {"version": 99, "entries": []})
    with pytest.raises(ValueError, match="duplicate"):
        to_tensors(_all_entries()[:1] * 2)


def test_format_validation() -> None:
    q = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="scale"):
        QuantizedMatrix(q=q, scale=torch.ones(4), bits=6, rotated=False)
    with pytest.raises(ValueError, match="int8"):
        GateInt8Row(q=q.float(), scale=torch.ones(4, dtype=torch.float16))
    with pytest.raises(ValueError, match="LQER"):
        corr = lqer.pack_sym(torch.ones(2, 1), torch.ones(1, 2), 4)
        Entry("p", (2,), "float32", Passthrough(torch.ones(2), "float32"), corr)
    with pytest.raises(ValueError, match="mode"):
        LowRankCorrection(q[:, :2], torch.ones(4).half(), q[:2], torch.ones(2).half(), mode="bogus", group=0)
