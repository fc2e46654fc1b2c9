"""pgolf.quant.hadamard: the Walsh-Hadamard matrix, the rotation identities, GPTQ in the rotated domain."""

from __future__ import annotations

import pytest
import torch

from pgolf.quant import hadamard, lqer
from pgolf.quant.formats import Entry, QuantizedMatrix, dequantize, lowrank_dense
from pgolf.quant.gptq import gptq_quantize, hessian_error, relative_error, sdclip_scales
from tests.helpers.quant import K, correlated_hessian, dense, gen


def test_hadamard_matrix() -> None:
    for n in (1, 2, 8, 512):
        q = hadamard.hadamard_matrix(n)
        assert torch.allclose(q @ q.T, torch.eye(n), atol=1e-5)
        assert torch.equal(q, q.T)
    with pytest.raises(ValueError, match="power-of-2"):
        hadamard.hadamard_matrix(96)


def test_hadamard_rotation_identities() -> None:
    w = torch.randn(16, 64, generator=gen(9))
    x = torch.randn(64, 5, generator=gen(10))
    q = hadamard.hadamard_matrix(64)
    w_rot = hadamard.rotate_weight(w)
    assert torch.allclose(hadamard.unrotate_weight(w_rot), w, atol=1e-5)
    assert torch.allclose(w @ x, w_rot @ (q @ x), atol=1e-4)
    h = correlated_hessian(64)
    # The H-weighted error is invariant: trace(E H E^T) = trace(E' H' E'^T).
    e = torch.randn(16, 64, generator=gen(11))
    assert hessian_error(e, h) == pytest.approx(
        hessian_error(hadamard.rotate_weight(e), hadamard.rotate_hessian(h)), rel=1e-4
    )


def test_gptq_in_rotated_domain_dequantizes_close_to_w() -> None:
    w = torch.randn(32, 128, generator=gen(12))
    w[:, 7] *= 20  # an outlier column, which rotation spreads out
    w_rot, h_rot = hadamard.rotate_weight(w), hadamard.rotate_hessian(correlated_hessian(128))
    s = sdclip_scales(w_rot, K, 8)
    fmt = QuantizedMatrix(q=gptq_quantize(w_rot, h_rot, s, 8), scale=s, bits=8, rotated=True)
    a, b = lqer.low_rank_residual(lqer.quantization_residual(w_rot, fmt), 4)
    corr = lqer.pack_asym(a, b, 64)
    plain = dequantize(Entry("w", (32, 128), "float32", fmt, None))
    assert relative_error(w - plain, w) < 0.1
    assert torch.allclose(plain, hadamard.unrotate_weight(dense(fmt.q, s)), atol=1e-5)
    fixed = dequantize(Entry("w", (32, 128), "float32", fmt, corr))
    expected = hadamard.unrotate_weight(dense(fmt.q, s) + lowrank_dense(corr))
    assert torch.allclose(fixed, expected, atol=1e-5)
