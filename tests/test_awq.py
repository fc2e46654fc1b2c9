"""AWQ-lite (#1908): group scores and selection by hand, the finer grid of the protected columns, a lower
H-weighted error, row-normalized statistics, config checks, and the round trip through formats and model.bin."""

import numpy as np
import pytest
import torch
from conftest import model_cfg

from pgolf.compress import pergroup, submission
from pgolf.config import ConfigError, parse_section, read_params
from pgolf.data import shards
from pgolf.model.gpt import EMBEDDING, GPT
from pgolf.model.layers import Linear
from pgolf.quant import awq, formats, gptq, lqer
from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians, hessian_rows
from pgolf.quant.policy import Decision, QuantizeConfig, decide
from pgolf.quant.quantize import awq_candidates, choose_awq_groups, quantize_matrix, quantize_state


def _quant(awq_cfg: dict | None = None, **overrides) -> QuantizeConfig:
    raw = read_params("params.yaml")["quantize"]
    raw = {**raw, **overrides, "awq": {**raw["awq"], **(awq_cfg or {})}}
    return parse_section(raw, "quantize", QuantizeConfig)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- scores and selection by hand ----


def test_activation_rms_and_group_scores_by_hand():
    h = torch.diag(torch.tensor([4.0, 16.0, 36.0, 64.0, 100.0]))
    rms = awq.activation_rms(h, 4)
    assert rms.dtype == torch.float64 and rms.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    w = torch.tensor([[1.0, -2.0, 0.0, 4.0, 9.0], [-3.0, 0.0, 2.0, 0.0, 9.0]])  # mean |W| by column: 2 1 1 2 9
    # groups of 2: [1*2 + 2*1, 3*1 + 4*2] = [4, 11]; the fifth column is a partial group, never scored
    assert awq.group_scores(w, rms, 2).tolist() == [4.0, 11.0]
    assert awq.group_scores(w, rms, 5).tolist() == [2 + 2 + 3 + 8 + 45.0]
    assert awq.group_scores(w, rms, 6).tolist() == []


def test_global_and_per_matrix_selection_with_ties():
    scores = {"a": torch.tensor([3.0, 1.0, 5.0]), "b": torch.tensor([5.0, 2.0]), "c": torch.tensor([1.0, 1.0])}
    pick = lambda k, scope: [(g.name, g.index, g.score) for g in awq.select_groups(scores, k, scope)]  # noqa: E731
    # global: one pool; the tie at 5 goes to the earlier tensor in state order
    assert pick(1, "global") == [("a", 2, 5.0)]
    assert pick(2, "global") == [("a", 2, 5.0), ("b", 0, 5.0)]
    assert pick(3, "global") == [("a", 2, 5.0), ("b", 0, 5.0), ("a", 0, 3.0)]
    # per_matrix: the top k of each candidate; c's tie goes to its lower group; k beyond a matrix's groups keeps all
    assert pick(1, "per_matrix") == [("a", 2, 5.0), ("b", 0, 5.0), ("c", 0, 1.0)]
    assert pick(3, "per_matrix")[3:] == [("b", 0, 5.0), ("b", 1, 2.0), ("c", 0, 1.0), ("c", 1, 1.0)]
    starts = awq.starts_by_tensor(awq.select_groups(scores, 2, "per_matrix"), 64)
    assert starts == {"a": (0, 128), "b": (0, 64), "c": (0, 64)}
    with pytest.raises(ValueError, match="top_k"):
        awq.select_groups(scores, 0, "global")


def _toy_state() -> tuple[dict, dict, dict]:
    """Three 8 x 128 matrices (two groups of 64 each), an int8 one and a small one; H = diag."""
    g = _gen(0)
    w = torch.randn(8, 128, generator=g)
    state = {"m0": w.clone(), "m1": w.clone(), "m2": w.clone(), "int8": w.clone(), "small": torch.randn(8, 64)}
    spec6 = _quant().up
    spec8 = spec6.model_copy(update={"bits": 8})
    decisions = {n: Decision("up", spec8 if n == "int8" else spec6) for n in state}
    return state, decisions, {n: torch.eye(t.shape[1]) for n, t in state.items()}


def test_candidates_follow_size_bits_and_statistics():
    state, decisions, hessians = _toy_state()
    rows = {n: 10 for n in state if n != "m2"}  # m2 like a lookup table: no activation statistics
    cfg = _quant({"enabled": True, "min_elements": 512})
    assert list(awq_candidates(state, hessians, decisions, cfg, rows)) == ["m0", "m1"]  # small: 512 elements
    cfg = _quant({"enabled": True, "min_elements": 511})
    assert list(awq_candidates(state, hessians, decisions, cfg, rows)) == ["m0", "m1", "small"]
    assert awq_candidates(state, hessians, decisions, _quant({"enabled": True, "bits": 6}), rows) == {}
    assert choose_awq_groups(state, hessians, decisions, _quant(), None) == {}  # off: nothing, no rows needed
    with pytest.raises(ValueError, match="row counts"):
        choose_awq_groups(state, hessians, decisions, _quant({"enabled": True}), None)


def test_global_selection_divides_by_the_row_count():
    """A looped layer sums twice the rows into H: m0's H = 2 H0 over 2N rows is m1's activation level exactly, and
    m1 runs 10% hotter in its second group, so m1 must win although m0's raw diag(H) is larger."""
    state, decisions, _ = _toy_state()
    h0 = torch.eye(128)
    hot = torch.ones(128)
    hot[64:] = 1.1**2
    hessians = {"m0": 2 * h0, "m1": h0 * hot, "m2": h0, "int8": h0, "small": torch.eye(64)}
    rows = {"m0": 200, "m1": 100}
    cfg = _quant({"enabled": True, "min_elements": 0, "top_k": 1, "scope": "global"})
    assert choose_awq_groups(state, hessians, decisions, cfg, rows) == {"m1": (64,)}
    per = _quant({"enabled": True, "min_elements": 0, "top_k": 1, "scope": "per_matrix"})
    assert set(choose_awq_groups(state, hessians, decisions, per, rows)) == {"m0", "m1"}


# ---- GPTQ on the finer grid ----


def _outlier_inputs(cols: int = 256, seed: int = 3) -> torch.Tensor:
    """H = X^T X / n of correlated inputs whose columns 70-79 are 8x louder than the rest."""
    g = _gen(seed)
    x = torch.randn(2048, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols))
    x[:, 70:80] *= 8.0
    return x.T @ x / x.shape[0]


def test_protected_columns_dequantize_on_the_int8_grid():
    w = torch.randn(32, 256, generator=_gen(4))
    h = _outlier_inputs()
    cfg = _quant({"enabled": True})
    spec = cfg.up
    entry = quantize_matrix("m", w, h, Decision("up", spec), cfg, awq_starts=(64, 192)).entry
    fmt = entry.fmt
    p = fmt.protected
    assert p is not None and (p.starts, p.size, p.bits) == ((64, 192), 64, 8)
    std = w.double().std(dim=1).numpy()
    expected_hi = (spec.clip_sigmas * std / 127).astype(np.float16)
    assert p.scale.dtype == torch.float16 and np.array_equal(p.scale.numpy(), expected_hi)
    assert torch.equal(fmt.scale, gptq.sdclip_scales(w, spec.clip_sigmas, 6))
    mask = torch.zeros(256, dtype=torch.bool)
    mask[64:128] = mask[192:256] = True
    q = fmt.q.float()
    assert q[:, mask].abs().max() <= 127 and q[:, mask].abs().max() > 31  # the finer codes are used
    assert q[:, ~mask].abs().max() <= 31
    dense = formats.dequantize(entry)
    by_hand = torch.where(mask, q * p.scale.float()[:, None], q * fmt.scale.float()[:, None])
    assert torch.equal(dense, by_hand)
    # with a diagonal H there is no error feedback: each column is round-to-nearest on its own grid
    diag = quantize_matrix("m", w, torch.eye(256), Decision("up", spec), cfg, awq_starts=(64, 192)).entry.fmt
    assert torch.equal(diag.q[:, mask], gptq.rtn_quantize(w[:, mask], p.scale, 8))
    assert torch.equal(diag.q[:, ~mask], gptq.rtn_quantize(w[:, ~mask], fmt.scale, 6))


def test_awq_lowers_the_hessian_weighted_error():
    w = torch.randn(32, 256, generator=_gen(5))
    h = _outlier_inputs()
    s = gptq.sdclip_scales(w, 11.5, 6)
    scores = awq.group_scores(w, awq.activation_rms(h, 1), 64)
    (chosen,) = awq.select_groups({"w": scores}, 1, "global")
    assert chosen.index == 1  # the group of the loud columns 70-79
    p = formats.ProtectedGroups((64,), 64, gptq.sdclip_scales(w, 11.5, 8), 8)
    plain = formats.QuantizedMatrix(q=gptq.gptq_quantize(w, h, s, 6), scale=s, bits=6, rotated=False)
    fine = formats.QuantizedMatrix(q=gptq.gptq_quantize(w, h, s, 6, protected=p), scale=s, bits=6, rotated=False,
                                   protected=p)  # fmt: skip
    err_plain = gptq.hessian_error(lqer.quantization_residual(w, plain), h)
    err_fine = gptq.hessian_error(lqer.quantization_residual(w, fine), h)
    assert err_fine < 0.8 * err_plain, (err_fine, err_plain)
    # the protected columns still feed their error forward: the other columns' codes move too
    assert not torch.equal(fine.q[:, 128:], plain.q[:, 128:])


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
    w = torch.randn(24, 192, generator=_gen(8))
    h = _outlier_inputs(192)
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
    w = torch.randn(16, 128, generator=_gen(6))
    h = _outlier_inputs(128)
    s = gptq.sdclip_scales(w, 11.5, 6)
    assert torch.equal(gptq.gptq_quantize(w, h, s, 6, protected=None), gptq.gptq_quantize(w, h, s, 6))
    coarse = formats.ProtectedGroups((0,), 64, gptq.sdclip_scales(w, 11.5, 5), 5)
    with pytest.raises(ValueError, match="more than 6 bits"):
        gptq.gptq_quantize(w, h, s, 6, protected=coarse)


# ---- statistics of the real model ----


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("shards")
    rng = np.random.default_rng(0)
    train = rng.integers(2, 60, size=3000)
    train[::97] = 1
    shards.write_shard(path / "train_000000.bin", train)
    return path


def _calib() -> CalibrateConfig:
    raw = {"batches": 1, "batch_tokens": 128, "seq_len": 32, "seed": 0, "doc_isolated": False}
    return parse_section(raw, "calibrate", CalibrateConfig)


def _model() -> GPT:
    torch.manual_seed(0)
    model = GPT(model_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("looped", [False, True])
def test_hessian_rows_are_the_rows_summed_into_each_hessian(shard_dir, looped):
    model = _model()
    seen: dict[str, int] = {}
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, Linear)}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, seen.get(n, 0) + a[0][..., 0].numel()))
             for n, m in linears.items()]  # fmt: skip
    hessians, tokens = collect_hessians(model, calibration_windows(shard_dir, _calib(), 0, 1), looped=looped,
                                        doc_isolated=False)  # fmt: skip
    for hook in hooks:
        hook.remove()
    rows = hessian_rows(model, looped, tokens)
    assert rows == {EMBEDDING: tokens, **seen}
    assert rows["blocks.1.mlp.up.weight"] == (2 if looped else 1) * tokens  # layers 1-2 run twice when looped
    assert set(rows) <= set(hessians)


# ---- end to end: quantize_state, formats, model.bin ----


def _awq_cfg(**awq_cfg) -> QuantizeConfig:
    lqer_all = {**read_params("params.yaml")["quantize"]["lqer"], "top_k": 100}  # every matrix, protected ones too
    return _quant({"enabled": True, "min_elements": 0, "group_size": 16, **awq_cfg}, hadamard=True, lqer=lqer_all)


@pytest.fixture(scope="module")
def quantized(shard_dir) -> dict:
    """The toy model quantized with 3 global AWQ-lite groups of 16 columns, Hadamard rotation and LQER everywhere."""
    model = _model()
    hessians, tokens = collect_hessians(model, calibration_windows(shard_dir, _calib(), 0, 1), looped=True,
                                        doc_isolated=False)  # fmt: skip
    state = {k: v.detach() for k, v in model.state_dict().items()}
    rows = hessian_rows(model, True, tokens)
    decisions = decide(model, _awq_cfg())
    entries, reports, chosen = quantize_state(state, hessians, decisions, _awq_cfg(top_k=3), rows)
    return {"state": state, "hessians": hessians, "rows": rows, "decisions": decisions, "entries": entries,
            "reports": reports, "chosen": chosen}  # fmt: skip


def test_quantize_state_reports_the_groups_and_lqer_fits_the_finer_grid(quantized):
    by_name = {e.name: e for e in quantized["entries"]}
    protected = {r["name"]: r["awq"] for r in quantized["reports"] if r["awq"]}
    assert sum(len(v.split()) for v in protected.values()) == 3
    for name, starts in protected.items():
        p = by_name[name].fmt.protected
        assert p is not None and " ".join(map(str, p.starts)) == starts and p.size == 16 and p.bits == 8
    assert all(by_name[r["name"]].fmt.protected is None for r in quantized["reports"] if not r["awq"])
    assert set(protected) <= set(quantized["chosen"])
    for r in quantized["reports"]:  # errors as stored, after LQER on the residual of the finer grid, un-rotated
        w = quantized["state"][r["name"]].float()
        error = w - formats.dequantize(by_name[r["name"]]).float()
        assert r["h_error"] == pytest.approx(gptq.hessian_error(error, quantized["hessians"][r["name"]]), rel=1e-5)


def test_per_matrix_scope_gives_every_candidate_its_groups(quantized):
    q = quantized
    cfg = _awq_cfg(top_k=2, scope="per_matrix")
    groups = choose_awq_groups(q["state"], q["hessians"], q["decisions"], cfg, q["rows"])
    candidates = awq_candidates(q["state"], q["hessians"], q["decisions"], cfg, q["rows"])
    assert list(groups) == list(candidates) and all(len(starts) == 2 for starts in groups.values())
    assert EMBEDDING in groups and "blocks.0.mlp.up.weight" in groups  # every matrix with statistics qualifies


def test_protected_groups_round_trip_through_formats_and_model_bin(quantized):
    entries = quantized["entries"]
    tensors, manifest = formats.to_tensors(entries)
    keys = [k for k in tensors if k.endswith(".awq_scale")]
    records = [r for r in manifest["entries"] if "awq" in r["format"]]
    assert keys and len(keys) == len(records) and all(r["format"]["awq"]["bits"] == 8 for r in records)
    back = formats.from_tensors(tensors, manifest)
    for a, b in zip(entries, back, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b)), a.name
    compress = read_params("params.yaml")["compress"]
    cfg = parse_section({**compress, "codec": "brotli", "rest_codec": "brotli"}, "compress", pergroup.CompressConfig)
    meta = {"model_config": {}, "train": {"looping_from_step": 10}, "formats": manifest}
    blob, _ = submission.pack_model(entries, meta, cfg, workers=1)
    restored, _ = submission.unpack_model(blob, workers=1)
    for a, b in zip(entries, restored, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b)), a.name
    assert formats.to_tensors(restored)[1] == manifest


def test_a_matrix_without_groups_keeps_the_old_manifest():
    w = torch.randn(8, 64, generator=_gen(7))
    s = gptq.sdclip_scales(w, 11.5, 6)
    fmt = formats.QuantizedMatrix(q=gptq.rtn_quantize(w, s, 6), scale=s, bits=6, rotated=False)
    tensors, manifest = formats.to_tensors([formats.Entry("m", (8, 64), "float32", fmt, None)])
    assert list(tensors) == ["m.q", "m.scale"]
    assert manifest["entries"][0]["format"] == {"kind": "matrix", "bits": 6, "rotated": False}


def test_protected_groups_are_validated():
    q = torch.zeros(4, 128, dtype=torch.int8)
    s = torch.ones(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="overlap"):
        formats.ProtectedGroups((0, 32), 64, s, 8)
    with pytest.raises(ValueError, match="passes the end"):
        formats.QuantizedMatrix(q=q, scale=s, bits=6, rotated=False, protected=formats.ProtectedGroups((96,), 64, s, 8))
    with pytest.raises(ValueError, match="not finer"):
        formats.QuantizedMatrix(q=q, scale=s, bits=8, rotated=False, protected=formats.ProtectedGroups((0,), 64, s, 8))


# ---- config ----


@pytest.mark.parametrize(("change", "message"), [
    ({"group_size": 0}, "quantize.awq.group_size must be positive (got 0)"),
    ({"top_k": 0}, "quantize.awq.top_k must be positive (got 0)"),
    ({"min_elements": -1}, "quantize.awq.min_elements must be >= 0 (got -1)"),
    ({"bits": 9}, "quantize.awq.bits: must be between 2 and 8"),
    ({"scope": "layer"}, "quantize.awq.scope: Input should be 'global' or 'per_matrix'"),
])  # fmt: skip
def test_awq_config_is_checked_at_load(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _quant(change)


def test_awq_needs_gptq():
    with pytest.raises(ConfigError, match="quantize.awq.enabled needs quantize.method: gptq"):
        _quant({"enabled": True}, method="rtn")
    assert _quant({"enabled": False}, method="rtn").awq.enabled is False
