"""pgolf.optim.muon: Newton–Schulz (Polar-Express and classic, compiled), the update pieces, the optimizer on 1
and 2 ranks, its config, and two steps against an independent float64 reference."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from pydantic import ValidationError
from torch import Tensor, nn

from pgolf import compiler as tc
from pgolf.optim.muon import (
    CLASSIC_COEFFS,
    POLAR_EXPRESS_COEFFS,
    Muon,
    MuonConfig,
    muon_update,
    nesterov_momentum,
    newton_schulz,
    normalize_rows,
    ns_coefficients,
    shape_scale,
)
from pgolf.optim.schedule import momentum_at
from tests.helpers.config import RECORD_PRESET, raw_section

# Polar-Express maps every normalized singular value in [1e-3, 1] into [0.8589, 1.1411] (the composed scalar
# polynomial, checked on a fine grid); classic NS5 maps [1e-2, 1] into [0.6818, 1.2024].
PE_BAND = (0.855, 1.145)


CLASSIC_BAND = (0.675, 1.21)


def _with_spectrum(shape: tuple[int, ...], lo: float, hi: float, seed: int) -> Tensor:
    """Random matrices (float64) whose singular values are log-spaced in [lo, hi]."""
    g = torch.Generator().manual_seed(seed)
    *batch, m, n = shape
    k = min(m, n)
    U, _ = torch.linalg.qr(torch.randn(*batch, m, k, generator=g, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(*batch, n, k, generator=g, dtype=torch.float64))
    s = torch.logspace(math.log10(lo), math.log10(hi), k, dtype=torch.float64)
    return U @ torch.diag_embed(s.expand(*batch, k)) @ V.mT


def _scalar_map(s: Tensor, coeffs) -> Tensor:
    for a, b, c in coeffs:
        s = a * s + b * s**3 + c * s**5
    return s


# ------------------------------------------------------------------------------------------- Newton-Schulz


def test_coefficient_tables():
    assert len(POLAR_EXPRESS_COEFFS) == 5
    assert POLAR_EXPRESS_COEFFS[0] == (8.156554524902461, -22.48329292557795, 15.878769915207462)
    assert POLAR_EXPRESS_COEFFS[4] == (2.3465413258596377, -1.7097828382687081, 0.42323551169305323)
    assert CLASSIC_COEFFS == (3.4445, -4.7750, 2.0315)
    assert ns_coefficients(3, "polar_express") == POLAR_EXPRESS_COEFFS[:3]
    assert ns_coefficients(9, "polar_express") == POLAR_EXPRESS_COEFFS  # the record's cap
    assert ns_coefficients(7, "classic") == (CLASSIC_COEFFS,) * 7
    with pytest.raises(ValueError):
        ns_coefficients(0, "classic")


@pytest.mark.parametrize("coeffs", ["polar_express", "classic"])
def test_ns_on_diagonal_matches_scalar_polynomial(coeffs):
    d = torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01], dtype=torch.float64)
    out = newton_schulz(torch.diag(d), 5, coeffs, torch.float64)
    expected = _scalar_map(d / (d.norm() + 1e-7), ns_coefficients(5, coeffs))
    torch.testing.assert_close(out, torch.diag(expected), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(64, 32), (32, 64), (3, 48, 48)])
def test_polar_express_orthogonalizes(shape):
    G = _with_spectrum(shape, 1e-2, 3.0, seed=1).float()
    X = newton_schulz(G, 5, "polar_express", torch.float32)
    assert X.shape == G.shape and X.dtype == G.dtype
    s = torch.linalg.svdvals(X.double())
    assert PE_BAND[0] <= s.min() and s.max() <= PE_BAND[1], (s.min(), s.max())
    k = min(shape[-2:])
    wide = X if shape[-2] <= shape[-1] else X.mT
    Gw = G if shape[-2] <= shape[-1] else G.mT
    Gn = Gw / torch.linalg.matrix_norm(Gw, keepdim=True)
    eye = torch.eye(k)
    err_out = torch.linalg.matrix_norm(wide @ wide.mT - eye, ord=2)
    err_in = torch.linalg.matrix_norm(Gn @ Gn.mT - eye, ord=2)
    assert (err_out < 0.31).all() and (err_in > 0.9).all()
    # Same singular vectors as the input: X = U f(S) V^T, so U^T X V is diagonal.
    U, _, Vh = torch.linalg.svd(G.double(), full_matrices=False)
    D = U.mT @ X.double() @ Vh.mT
    off = D - torch.diag_embed(torch.diagonal(D, dim1=-2, dim2=-1))
    assert off.abs().max() < 1e-4


def test_classic_ns_band():
    G = _with_spectrum((96, 40), 0.1, 1.0, seed=2).float()
    s = torch.linalg.svdvals(newton_schulz(G, 5, "classic", torch.float32).double())
    assert CLASSIC_BAND[0] <= s.min() and s.max() <= CLASSIC_BAND[1], (s.min(), s.max())
    assert s.min() < PE_BAND[0]  # classic is visibly looser than Polar-Express on the same input


def test_ns_float32_matches_float64_and_bf16_runs():
    G = torch.randn(40, 72, generator=torch.Generator().manual_seed(3))
    x64 = newton_schulz(G.double(), 5, "polar_express", torch.float64)
    x32 = newton_schulz(G, 5, "polar_express", torch.float32)
    torch.testing.assert_close(x32.double(), x64, rtol=0, atol=2e-5)
    xbf = newton_schulz(G, 5, "polar_express", torch.bfloat16)
    assert xbf.dtype == torch.float32 and (xbf - x32).abs().max() < 0.1


def test_ns_transpose_equivariant():
    G = torch.randn(2, 24, 56, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for coeffs in ("polar_express", "classic"):
        a = newton_schulz(G, 5, coeffs, torch.float64)
        b = newton_schulz(G.mT, 5, coeffs, torch.float64)
        torch.testing.assert_close(b, a.mT, rtol=1e-10, atol=1e-12)


BACKEND = "aot_eager"


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("batch", [False, True])
def test_compiled_newton_schulz_matches_eager_and_never_recompiles_for_the_schedule(batch):
    torch.manual_seed(3)
    shapes = [(16, 8), (8, 16), (16, 8), (12, 12)]
    eager_params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    compiled_params = [torch.nn.Parameter(p.detach().clone()) for p in eager_params]
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.01, nesterov=True, row_normalize=True, ns_steps=5,
              ns_coeffs="polar_express")  # fmt: skip
    eager = Muon(eager_params, **kw)
    compiled = Muon(compiled_params, **kw, compile_backend=BACKEND, batch_by_shape=batch)
    start = tc.graphs_compiled()
    for step in range(4):
        grads = [torch.randn(s) for s in shapes]
        for opt, params in ((eager, eager_params), (compiled, compiled_params)):
            for group in opt.param_groups:  # the schedule rewrites lr and momentum every step
                group["lr"], group["momentum"] = 0.02 * (1 - step / 8), 0.9 + 0.01 * step
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    assert tc.graphs_compiled() - start == 3  # one graph per matrix shape (batched: (2,16,8), (1,8,16), ...)
    for a, b in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------- Muon update


def test_nesterov_momentum_by_hand():
    grad, buf = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.25]])
    u = nesterov_momentum(grad, buf, 0.9, nesterov=True)
    torch.testing.assert_close(buf, torch.tensor([[1.45, -1.775]]))
    torch.testing.assert_close(u, torch.tensor([[1.0 + 0.9 * 1.45, -2.0 + 0.9 * -1.775]]))
    buf2 = torch.tensor([[0.5, 0.25]])
    u2 = nesterov_momentum(grad, buf2, 0.9, nesterov=False)
    assert u2 is buf2
    torch.testing.assert_close(u2, torch.tensor([[1.45, -1.775]]))


def test_normalize_rows():
    U = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0]]).to(torch.bfloat16)
    out = normalize_rows(U)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), torch.tensor([[0.6, 0.8], [0.0, 0.0], [1.0, 0.0]]), atol=4e-3, rtol=0)


def test_shape_scale():
    assert shape_scale(2048, 512) == 2.0 and shape_scale(8, 2) == 2.0
    assert shape_scale(512, 512) == 1.0 and shape_scale(256, 512) == 1.0


@pytest.mark.parametrize("row_norm", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_muon_update_composition_with_identity_ns(row_norm, nesterov):
    seen = {}

    def identity_ns(U, steps, coeffs, dtype):
        seen["args"] = (steps, coeffs, dtype)
        return U.clone()

    g = torch.Generator().manual_seed(5)
    grad, buf0 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    buf = buf0.clone()
    out = muon_update(
        grad, buf, momentum=0.9, nesterov=nesterov, row_normalize=row_norm, ns_steps=3, coeffs="classic",
        ns_dtype=torch.float64, orthogonalize=identity_ns,
    )  # fmt: skip
    new_buf = 0.9 * buf0 + grad
    u = grad + 0.9 * new_buf if nesterov else new_buf
    if row_norm:
        u = u / u.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(buf, new_buf)
    torch.testing.assert_close(out, 2.0 * u)  # rows/cols = 4 -> scale 2
    assert seen["args"] == (3, "classic", torch.float64)


def test_muon_update_is_scaled_orthogonal():
    g = torch.Generator().manual_seed(6)
    out = muon_update(
        torch.randn(32, 8, generator=g), torch.zeros(32, 8), momentum=0.95, nesterov=True, row_normalize=True,
        ns_steps=5, coeffs="polar_express", ns_dtype=torch.float32,
    )  # fmt: skip
    s = torch.linalg.svdvals(out.double()) / 2.0  # 32x8 -> scale 2
    assert PE_BAND[0] <= s.min() and s.max() <= PE_BAND[1]


# ------------------------------------------------------------------------------------------- Muon optimizer


def _muon_kw() -> dict:
    return dict(lr=0.05, momentum=0.9, weight_decay=0.0, nesterov=True, row_normalize=False, ns_steps=5,
                ns_coeffs="polar_express")  # fmt: skip


def _muon(params, **over) -> Muon:
    return Muon(params, **{**_muon_kw(), **over})


def test_muon_decreases_quadratic_loss():
    g = torch.Generator().manual_seed(7)
    target = torch.randn(16, 12, generator=g)
    W = nn.Parameter(torch.zeros(16, 12))
    opt = _muon([W], lr=0.2, row_normalize=True)
    losses = []
    for i in range(60):
        opt.param_groups[0]["lr"] = 0.2 * (1 - i / 60)  # a linear decay, rewritten in the group every step
        opt.zero_grad()
        loss = 0.5 * (W - target).pow(2).sum()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[1] < losses[0] and losses[-1] < 0.01 * losses[0]


def test_muon_decoupled_weight_decay_with_zero_grad():
    W = nn.Parameter(torch.randn(6, 4, generator=torch.Generator().manual_seed(8)))
    before = W.detach().clone()
    opt = _muon([W], lr=0.1, weight_decay=0.5)
    opt.param_groups[0]["lr"] = 0.2  # the current group lr is what decays the weights
    W.grad = torch.zeros_like(W)
    opt.step()
    torch.testing.assert_close(W.detach(), before * (1 - 0.2 * 0.5), rtol=0, atol=0)


def test_muon_rejects_vectors_and_bad_coeffs():
    with pytest.raises(ValueError, match="AdamW"):
        _muon([nn.Parameter(torch.zeros(4))])
    with pytest.raises(ValueError):
        _muon([nn.Parameter(torch.zeros(4, 4))], ns_coeffs="cubic")


def test_muon_momentum_buffer_dtype_and_group_momentum():
    W = nn.Parameter(torch.zeros(4, 4))
    opt = _muon([W], ns_dtype=torch.float64, momentum=0.5)
    W.grad = torch.ones(4, 4)
    opt.step()
    opt.param_groups[0]["momentum"] = 0.25
    opt.step()
    torch.testing.assert_close(opt.state[W]["momentum_buffer"], torch.full((4, 4), 1.25, dtype=torch.float64))


def _dist_params() -> list[nn.Parameter]:
    g = torch.Generator().manual_seed(9)
    shapes = [(16, 8), (8, 16), (3, 12, 12), (20, 5), (6, 6), (16, 8), (6, 6), (16, 8)]
    return [nn.Parameter(torch.randn(*s, generator=g)) for s in shapes]


def _run_three_steps(params: list[nn.Parameter], batch: bool = False) -> Muon:
    opt = _muon(params, lr=0.02, weight_decay=0.1, row_normalize=True, batch_by_shape=batch)
    for step in range(3):
        g = torch.Generator().manual_seed(100 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.param_groups[0]["lr"] = 0.02 * (1 - 0.2 * step)
        opt.param_groups[0]["momentum"] = momentum_at(step, 0.85, 0.95, 2)
        opt.step()
    return opt


def _dist_worker(rank: int, world: int, store_path: str, out_dir: str, batch: bool) -> None:
    store = dist.FileStore(store_path, world)
    # A short timeout turns a mismatched collective into a failure instead of a hung test.
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world, timeout=timedelta(seconds=30))
    calls = {"all_gather": 0, "broadcast": 0, "all_reduce": 0}
    for name in calls:
        original = getattr(dist, name)

        def counted(*args, __original=original, __name=name, **kwargs):
            calls[__name] += 1
            return __original(*args, **kwargs)

        setattr(dist, name, counted)
    try:
        params = _dist_params()
        opt = _run_three_steps(params, batch)
        owned = [i for i, p in enumerate(params) if p in opt.state]
        torch.save({"params": [p.detach() for p in params], "owned": owned, "calls": calls},
                   Path(out_dir) / f"rank{rank}.pt")  # fmt: skip
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("batch", [False, True])
def test_muon_two_ranks_match_single_process(tmp_path, batch):
    """Each rank batches only the matrices it owns ((6,6) x2 on rank 0, (16,8) x2 on rank 1; three (16,8) in one
    process), and all of them agree. The updates travel in one all_gather per shape (5 shapes: 5 collectives a
    step, where one broadcast per matrix made 8)."""
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "store"), str(tmp_path), batch), nprocs=2, join=True)
    single_params = _dist_params()
    _run_three_steps(single_params, batch)
    single = [p.detach() for p in single_params]
    results = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert results[0]["owned"] == [0, 2, 4, 6] and results[1]["owned"] == [1, 3, 5, 7]
    assert all(r["calls"] == {"all_gather": 3 * 5, "broadcast": 0, "all_reduce": 0} for r in results)
    for r in results:
        for got, want in zip(r["params"], single, strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert any((p - q).abs().max() > 1e-3 for p, q in zip(single, _dist_params(), strict=True))


def test_batched_newton_schulz_matches_one_matrix_at_a_time():
    """Batching by shape changes how the products are launched, not the update: repeated shapes, a bank,
    momentum buffers carried over three steps."""
    unbatched, batched = _dist_params(), _dist_params()
    opts = [_run_three_steps(unbatched, batch=False), _run_three_steps(batched, batch=True)]
    for p, q in zip(unbatched, batched, strict=True):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6)
        torch.testing.assert_close(opts[1].state[q]["momentum_buffer"], opts[0].state[p]["momentum_buffer"])
    assert Muon([nn.Parameter(torch.ones(2, 2))], **_muon_kw()).batch_by_shape is False  # CPU default


# ------------------------------------------------------------------------------------------- config


def _muon_cfg(**over) -> dict:
    """The record preset's train.muon section, with ``over`` on top."""
    raw = raw_section("train", RECORD_PRESET)["muon"]
    raw.update(over)
    return raw


def test_muon_config():
    cfg = MuonConfig.model_validate(_muon_cfg())
    assert cfg.ns_coeffs == "polar_express" and cfg.momentum_warmup_steps == 1500
    MuonConfig.model_validate(_muon_cfg(ns_steps=7, ns_coeffs="classic"))
    for bad in (dict(ns_steps=6), dict(ns_coeffs="cubic"), dict(momentum=1.0), dict(ns_steps=0), dict(extra=1)):
        with pytest.raises(ValidationError):
            MuonConfig.model_validate(_muon_cfg(**bad))
    with pytest.raises(ValidationError, match="weight_decay"):
        MuonConfig.model_validate({k: v for k, v in _muon_cfg().items() if k != "weight_decay"})


# ------------------------------------------------------------------ against an independent float64 reference


def _reference_polar_express(G: torch.Tensor, steps: int) -> torch.Tensor:
    """The record's iteration written out in float64: Frobenius-normalise, then X <- aX + (bA + cA^2)X, A = XX^T."""
    X = G.double()
    tall = X.size(-2) > X.size(-1)
    if tall:
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)
    for a, b, c in POLAR_EXPRESS_COEFFS[:steps]:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return X.mT if tall else X


@pytest.mark.parametrize("shape", [(24, 40), (40, 24), (2, 16, 16)])
def test_polar_express_matches_float64_reference(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(3))
    ours = newton_schulz(G, 5, "polar_express", torch.float32)
    torch.testing.assert_close(ours.double(), _reference_polar_express(G, 5), rtol=2e-4, atol=2e-4)


def test_muon_step_matches_float64_reference():
    """Two Muon steps on a 32x16 matrix against momentum, Nesterov, row norm, PE-NS, shape scale and WD in float64."""
    gen = torch.Generator().manual_seed(5)
    w0 = torch.randn(32, 16, generator=gen)
    grads = [torch.randn(32, 16, generator=gen) for _ in range(2)]
    lr, mu, wd = 0.05, 0.9, 0.1
    p = torch.nn.Parameter(w0.clone())
    opt = Muon([p], lr=lr, momentum=mu, weight_decay=wd, nesterov=True, row_normalize=True, ns_steps=5,
               ns_coeffs="polar_express")  # fmt: skip
    ref, buf = w0.double(), torch.zeros(32, 16, dtype=torch.float64)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        buf = mu * buf + g.double()
        u = g.double() + mu * buf
        u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-7)
        update = _reference_polar_express(u, 5) * math.sqrt(max(1.0, 32 / 16))
        ref = ref * (1 - lr * wd) - lr * update
    torch.testing.assert_close(p.detach().double(), ref, rtol=1e-4, atol=1e-5)
