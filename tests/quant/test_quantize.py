"""pgolf.quant.quantize: quantize_state on real model layers (GPTQ beats RTN, on trained layers too; LQER helps;
reported errors are those of the dequantized weight; a missing Hessian named), the inverse key, LQER group 32
through model.bin, and AWQ-lite's candidates, groups and finer grid."""

import json

import numpy as np
import pytest
import torch

from pgolf import tensorio
from pgolf.config import parse_section, read_params
from pgolf.errors import PgolfError
from pgolf.model.gpt import EMBEDDING
from pgolf.quant import formats, gptq
from pgolf.quant.hessian import calibration_windows, collect_hessians
from pgolf.quant.policy import Decision, decide
from pgolf.quant.quantize import awq_candidates, choose_awq_groups, quantize_matrix, quantize_state
from stages.train import train
from tests.helpers.common import ROOT, needs
from tests.helpers.config import calibrate_cfg, quantize_cfg, train_cfg
from tests.helpers.quant import awq_quant, awq_quant_all, calib, gen, noisy_model, outlier_inputs
from tests.helpers.train import SCORE, paths, tiny_model


def _trained_like(shard_dir):
    model = noisy_model(1)
    batches = list(calibration_windows(shard_dir, calib(batches=6), 0, 1))
    hessians, _ = collect_hessians(model, iter(batches), looped=True, doc_isolated=False)
    return model, hessians


def test_gptq_beats_rtn_on_real_layers_and_lqer_helps(shard_dir):
    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    decisions = decide(model, quantize_cfg())
    _, gptq_rows, chosen = quantize_state(
        state, hessians, decisions, quantize_cfg(lqer={**quantize_cfg().lqer.model_dump(), "enabled": False})
    )
    sd_rtn = quantize_cfg(method="gptq", act_order=False, damping=1e6)  # huge damping: GPTQ degenerates to RTN
    _, rtn_rows, _ = quantize_state(
        state,
        hessians,
        decisions,
        sd_rtn.model_copy(update={"lqer": sd_rtn.lqer.model_copy(update={"enabled": False})}),
    )
    gptq_err = {r["name"]: r["h_error"] for r in gptq_rows}
    rtn_err = {r["name"]: r["h_error"] for r in rtn_rows}
    assert sum(gptq_err.values()) < 0.9 * sum(rtn_err.values())
    assert sum(gptq_err[n] < rtn_err[n] for n in gptq_err) >= 0.8 * len(gptq_err)
    entries, rows, chosen = quantize_state(state, hessians, decisions, quantize_cfg())
    assert len(chosen) == 3 and all(r["lqer"] == (r["name"] in chosen) for r in rows)
    rel = {r["name"]: r["rel_error"] for r in rows}
    no_lqer = {r["name"]: r["rel_error"] for r in gptq_rows}
    assert all(rel[n] < no_lqer[n] for n in chosen)
    tensors, manifest = formats.to_tensors(entries)
    restored = formats.from_tensors(tensors, manifest)
    for a, b in zip(entries, restored, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b))


def test_reported_errors_are_those_of_the_dequantized_weight(shard_dir):
    """rel_error and h_error are gptq's measures of the stored matrix with its LQER correction; taken in the
    Hadamard-rotated domain, they equal those of the dequantized weight against W and the unrotated H."""
    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = quantize_cfg(hadamard=True)
    entries, rows, chosen = quantize_state(state, hessians, decide(model, cfg), cfg)
    by_name = {e.name: e for e in entries}
    assert len(chosen) == 3 and any(by_name[r["name"]].fmt.rotated for r in rows)
    for r in rows:
        w = state[r["name"]].float()
        error = w - formats.dequantize(by_name[r["name"]]).float()
        assert r["rel_error"] == pytest.approx(gptq.relative_error(error, w), rel=1e-5), r["name"]
        assert r["h_error"] == pytest.approx(gptq.hessian_error(error, hessians[r["name"]]), rel=1e-5), r["name"]


def test_a_missing_hessian_names_the_tensor_and_the_fix():
    model = noisy_model()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    decisions = decide(model, quantize_cfg())
    hessians = {n: torch.eye(w.shape[1]) for n, w in state.items() if decisions[n].spec is not None}
    del hessians["blocks.2.mlp.up.weight"]
    with pytest.raises(PgolfError, match=r"no Hessian for 'blocks\.2\.mlp\.up\.weight' .*`dvc repro calibrate`"):
        quantize_state(state, hessians, decisions, quantize_cfg())


def test_the_inverse_key_reaches_gptq(monkeypatch):
    """quantize.inverse picks GPTQ's H^-1 factor (#2054); both give the same codes here."""
    seen = []
    original = gptq.inverse_upper_factor
    monkeypatch.setattr(gptq, "inverse_upper_factor", lambda h, method, shape=(): seen.append(method) or
                        original(h, method, shape))  # fmt: skip
    model = noisy_model()
    w, h = model.state_dict()["blocks.0.mlp.up.weight"], torch.eye(32) + 0.1
    d = decide(model, quantize_cfg())["blocks.0.mlp.up.weight"]
    codes = [quantize_matrix("m", w, h, d, quantize_cfg(inverse=inverse)).entry.fmt.q
             for inverse in ("cholesky", "reverse_cholesky")]  # fmt: skip
    assert seen == ["cholesky", "reverse_cholesky"] and torch.equal(*codes)


def test_lqer_group_32_end_to_end(shard_dir):
    """#2060's LQER retune (rank 2, group 32, top 4): the corrections' B scales are twice those of group 64, and
    model.bin gives back the same dequantized tensors."""
    from pgolf.compress import pergroup, submission

    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = quantize_cfg(lqer={**quantize_cfg().lqer.model_dump(), "rank": 2, "top_k": 4, "group": 32})
    entries, rows, chosen = quantize_state(state, hessians, decide(model, cfg), cfg)
    corrections = {e.name: e.lqer for e in entries if e.lqer is not None}
    assert len(chosen) == 4 and set(corrections) == set(chosen)
    for name, c in corrections.items():
        assert (c.mode, c.group, c.b_q.shape[0]) == ("asym", 32, 2)
        assert c.b_scale.numel() == 2 * state[name].shape[1] // 32
    tensors, manifest = formats.to_tensors(entries)
    compress = parse_section({**read_params("params.yaml")["compress"], "codec": "brotli"}, "compress",
                             pergroup.CompressConfig)  # fmt: skip
    blob, _ = submission.pack_model(entries, {"model_config": {}, "train": {"looping_from_step": None},
                                              "formats": manifest}, compress, workers=1)  # fmt: skip
    restored, _ = submission.unpack_model(blob, workers=1)
    for a, b in zip(entries, restored, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b)), a.name


@needs("dvclive")  # its former file skipped whole without dvclive
def test_gptq_beats_rtn_on_the_layers_of_a_trained_model(data, tmp_path):
    """Train the toy model briefly, calibrate on its training shards, then compare H-weighted errors."""
    from pgolf.model.config import ModelConfig
    from pgolf.model.gpt import GPT
    from pgolf.quant.hessian import calibration_windows, collect_hessians
    from pgolf.quant.policy import QuantizeConfig, decide
    from pgolf.quant.quantize import quantize_state

    train(tiny_model(), train_cfg(iterations=20, val_every=0), SCORE, paths(data, tmp_path))
    state, meta = tensorio.load_tensors(tmp_path / "train" / "ema.safetensors")
    model = GPT(ModelConfig.model_validate(json.loads((tmp_path / "train" / "meta.json").read_text())["model_config"]))
    model.load_state_dict(state)
    calib = calibrate_cfg(batches=4, batch_tokens=512, seq_len=64, doc_isolated=True)
    hessians, _ = collect_hessians(model, calibration_windows(data / "shards", calib, 0, 1), looped=True,
                                   doc_isolated=True)  # fmt: skip
    from pgolf.quant import gptq

    base = read_params(ROOT / "params.yaml")["quantize"]
    cfg = parse_section({**base, "lqer": {**base["lqer"], "enabled": False}}, "quantize", QuantizeConfig)
    _, rows, _ = quantize_state(model.state_dict(), hessians, decide(model, cfg), cfg)
    ours = {r["name"]: r["h_error"] for r in rows}
    rtn = {}  # round-to-nearest under the same SDClip scales
    for name, d in decide(model, cfg).items():
        if d.spec is not None:
            w = model.state_dict()[name].float()
            scale = gptq.sdclip_scales(w, d.spec.clip_sigmas, d.spec.bits)
            w_hat = gptq.rtn_quantize(w, scale, d.spec.bits).float() * scale.float()[:, None]
            rtn[name] = gptq.hessian_error(w - w_hat, hessians[name])
    assert sum(ours.values()) < 0.8 * sum(rtn.values())
    assert sum(ours[n] < rtn[n] for n in ours) >= 0.9 * len(ours)


# ---- AWQ-lite ----


def _toy_state() -> tuple[dict, dict, dict]:
    """Three 8 x 128 matrices (two groups of 64 each), an int8 one and a small one; H = diag."""
    g = gen(0)
    w = torch.randn(8, 128, generator=g)
    state = {"m0": w.clone(), "m1": w.clone(), "m2": w.clone(), "int8": w.clone(), "small": torch.randn(8, 64)}
    spec6 = awq_quant().up
    spec8 = spec6.model_copy(update={"bits": 8})
    decisions = {n: Decision("up", spec8 if n == "int8" else spec6) for n in state}
    return state, decisions, {n: torch.eye(t.shape[1]) for n, t in state.items()}


def test_candidates_follow_size_bits_and_statistics():
    state, decisions, hessians = _toy_state()
    rows = {n: 10 for n in state if n != "m2"}  # m2 like a lookup table: no activation statistics
    cfg = awq_quant({"enabled": True, "min_elements": 512})
    assert list(awq_candidates(state, hessians, decisions, cfg, rows)) == ["m0", "m1"]  # small: 512 elements
    cfg = awq_quant({"enabled": True, "min_elements": 511})
    assert list(awq_candidates(state, hessians, decisions, cfg, rows)) == ["m0", "m1", "small"]
    assert awq_candidates(state, hessians, decisions, awq_quant({"enabled": True, "bits": 6}), rows) == {}
    assert choose_awq_groups(state, hessians, decisions, awq_quant(), None) == {}  # off: nothing, no rows needed
    with pytest.raises(ValueError, match="row counts"):
        choose_awq_groups(state, hessians, decisions, awq_quant({"enabled": True}), None)


def test_global_selection_divides_by_the_row_count():
    """A looped layer sums twice the rows into H: m0's H = 2 H0 over 2N rows is m1's activation level exactly, and
    m1 runs 10% hotter in its second group, so m1 must win although m0's raw diag(H) is larger."""
    state, decisions, _ = _toy_state()
    h0 = torch.eye(128)
    hot = torch.ones(128)
    hot[64:] = 1.1**2
    hessians = {"m0": 2 * h0, "m1": h0 * hot, "m2": h0, "int8": h0, "small": torch.eye(64)}
    rows = {"m0": 200, "m1": 100}
    cfg = awq_quant({"enabled": True, "min_elements": 0, "top_k": 1, "scope": "global"})
    assert choose_awq_groups(state, hessians, decisions, cfg, rows) == {"m1": (64,)}
    per = awq_quant({"enabled": True, "min_elements": 0, "top_k": 1, "scope": "per_matrix"})
    assert set(choose_awq_groups(state, hessians, decisions, per, rows)) == {"m0", "m1"}


def test_protected_columns_dequantize_on_the_int8_grid():
    w = torch.randn(32, 256, generator=gen(4))
    h = outlier_inputs()
    cfg = awq_quant({"enabled": True})
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
    cfg = awq_quant_all(top_k=2, scope="per_matrix")
    groups = choose_awq_groups(q["state"], q["hessians"], q["decisions"], cfg, q["rows"])
    candidates = awq_candidates(q["state"], q["hessians"], q["decisions"], cfg, q["rows"])
    assert list(groups) == list(candidates) and all(len(starts) == 2 for starts in groups.values())
    assert EMBEDDING in groups and "blocks.0.mlp.up.weight" in groups  # every matrix with statistics qualifies
