"""Calibration and the quantization policy on real model layers: training tokens only, Hessians from the forward,
the record's precision for every tensor, GPTQ beating RTN on trained layers, LQER, round trip."""

import numpy as np
import pytest
import torch
from conftest import RECORD_MODEL, model_cfg

from pgolf.config import ConfigError, parse_section, read_params
from pgolf.data import shards
from pgolf.errors import PgolfError
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import EMBEDDING, GPT
from pgolf.quant import formats, gptq
from pgolf.quant.gptq import clip_range
from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians
from pgolf.quant.policy import QuantizeConfig, decide
from pgolf.quant.quantize import quantize_matrix, quantize_state


def _calib(**overrides) -> CalibrateConfig:
    raw = {"batches": 3, "batch_tokens": 256, "seq_len": 32, "seed": 0, "doc_isolated": False, **overrides}
    return parse_section(raw, "calibrate", CalibrateConfig)


def _quant(**overrides) -> QuantizeConfig:
    raw = {**read_params("params.yaml")["quantize"], **overrides}
    return parse_section(raw, "quantize", QuantizeConfig)


@pytest.mark.parametrize(("section", "key", "value"), [("q", "bits", 99), ("embedding", "bits", 1),
                                                       ("lqer", "factor_bits", 9)])  # fmt: skip
def test_bit_widths_are_range_checked_at_load(section, key, value):
    raw = read_params("params.yaml")["quantize"]
    with pytest.raises(ConfigError) as err:
        _quant(**{section: {**raw[section], key: value}})
    assert str(err.value) == f"params.yaml: quantize.{section}.{key}: must be between 2 and 8 (got {value})"


@pytest.fixture
def shard_dir(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(2):
        train = rng.integers(2, 60, size=3000)
        train[::97] = 1
        shards.write_shard(tmp_path / f"train_{i:06d}.bin", train)
    shards.write_shard(tmp_path / "val_000000.bin", np.full(500, 63))  # a token that no training shard holds
    return tmp_path


def test_calibration_reads_no_validation_token(shard_dir, monkeypatch):
    read = []
    original = shards.read_shard
    monkeypatch.setattr(shards, "read_shard", lambda path, **kw: read.append(path.name) or original(path, **kw))
    windows = list(calibration_windows(shard_dir, _calib(batches=20), rank=0, world_size=1))
    assert read and all(name.startswith("train_") for name in read)
    tokens = torch.cat([w.flatten() for w in windows])
    assert tokens.numel() == 20 * 8 * 33 and not (tokens == 63).any()
    other_rank = list(calibration_windows(shard_dir, _calib(batches=20), rank=1, world_size=2))
    assert not torch.equal(windows[0], other_rank[0])


def _model(seed=0):
    torch.manual_seed(seed)
    model = GPT(model_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_hessians_come_from_the_forward(shard_dir):
    model = _model()
    batches = list(calibration_windows(shard_dir, _calib(), 0, 1))
    h, tokens = collect_hessians(model, iter(batches), looped=True, doc_isolated=False)
    assert tokens == 3 * 8 * 32 and len(h) == 6 * 6 + 1
    attn = "blocks.0.attn"
    torch.testing.assert_close(h[f"{attn}.q.weight"], h[f"{attn}.k.weight"])
    torch.testing.assert_close(h[f"{attn}.q.weight"], h[f"{attn}.v.weight"])
    hidden = torch.cat([model.hidden(b[:, :-1], None, True, None).reshape(-1, 32) for b in batches])
    torch.testing.assert_close(h[EMBEDDING], hidden.T @ hidden, rtol=1e-4, atol=1e-3)
    for m in h.values():
        torch.testing.assert_close(m, m.T)
        assert torch.linalg.eigvalsh(m.double()).min() > -1e-6 * m.diagonal().max()
    unlooped, _ = collect_hessians(model, iter(batches), looped=False, doc_isolated=False)
    torch.testing.assert_close(unlooped["blocks.0.mlp.down.weight"], h["blocks.0.mlp.down.weight"])
    loop_layer = "blocks.1.mlp.up.weight"  # layers 1-2 loop twice when recurrence is on
    assert not torch.allclose(unlooped[loop_layer], h[loop_layer])


def test_record_policy_assigns_the_spec_precision():
    preset = read_params("presets/record_1855.yaml")
    model = GPT(parse_section(RECORD_MODEL, "model", ModelConfig))
    decisions = decide(model, parse_section(preset["quantize"], "quantize", QuantizeConfig))
    by_kind = {}
    for name, d in decisions.items():
        by_kind.setdefault(d.kind, []).append((name, d.spec.bits if d.spec else None))
    assert {k: len(v) for k, v in by_kind.items()} == {"embedding": 1, "q": 11, "k": 11, "v": 11, "o": 11, "up": 11,
                                                      "down": 11, "gate": 11, "passthrough": 61 - 11}  # fmt: skip
    assert by_kind["embedding"] == [("tok_emb.weight", 7)]
    assert all(bits == 6 for kind in ("q", "k", "v", "o", "up", "down") for _, bits in by_kind[kind])
    assert {bits: clip_range(bits) for bits in (6, 7, 8)} == {6: 31, 7: 63, 8: 127}
    # The quantizer itself saturates at those ranges under the record's decisions: outliers far past the clip.
    cfg = parse_section(preset["quantize"], "quantize", QuantizeConfig)
    w = torch.randn(4, 1024, generator=torch.Generator().manual_seed(0))
    w[0, 0], w[1, 0] = 1e3, -1e3
    for name, c in (("tok_emb.weight", 63), ("blocks.0.attn.q.weight", 31), ("blocks.0.mlp.up.weight", 31)):
        q = quantize_matrix(name, w, torch.eye(1024), decisions[name], cfg).entry.fmt.q
        assert (q.min().item(), q.max().item()) == (-c, c), name


def _trained_like(shard_dir):
    model = _model(1)
    batches = list(calibration_windows(shard_dir, _calib(batches=6), 0, 1))
    hessians, _ = collect_hessians(model, iter(batches), looped=True, doc_isolated=False)
    return model, hessians


def test_gptq_beats_rtn_on_real_layers_and_lqer_helps(shard_dir):
    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    decisions = decide(model, _quant())
    _, gptq_rows, chosen = quantize_state(state, hessians, decisions, _quant(lqer={**_quant().lqer.model_dump(),
                                                                                    "enabled": False}))  # fmt: skip
    sd_rtn = _quant(method="gptq", act_order=False, damping=1e6)  # huge damping: GPTQ degenerates to RTN
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
    entries, rows, chosen = quantize_state(state, hessians, decisions, _quant())
    assert len(chosen) == 3 and all(r["lqer"] == (r["name"] in chosen) for r in rows)
    rel = {r["name"]: r["rel_error"] for r in rows}
    no_lqer = {r["name"]: r["rel_error"] for r in gptq_rows}
    assert all(rel[n] < no_lqer[n] for n in chosen)
    tensors, manifest = formats.to_tensors(entries)
    restored = formats.from_tensors(tensors, manifest)
    for a, b in zip(entries, restored, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b))


def test_mixed_precision_is_per_kind_bits():
    """#2143: int5 for q, o and down, int6 for k, v and up, int7 embedding."""
    model = _model()
    five = {"bits": 5, "clip_sigmas": 12.85, "rtn_clip_percentile": 100.0}
    six = {"bits": 6, "clip_sigmas": 12.85, "rtn_clip_percentile": 100.0}
    decisions = decide(model, _quant(q=five, o=five, down=five, k=six, v=six, up=six))
    bits = {d.kind: d.spec.bits for d in decisions.values() if d.spec}
    assert bits == {"embedding": 7, "q": 5, "o": 5, "down": 5, "k": 6, "v": 6, "up": 6}


def test_reported_errors_are_those_of_the_dequantized_weight(shard_dir):
    """rel_error and h_error are gptq's measures of the stored matrix with its LQER correction; taken in the
    Hadamard-rotated domain, they equal those of the dequantized weight against W and the unrotated H."""
    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = _quant(hadamard=True)
    entries, rows, chosen = quantize_state(state, hessians, decide(model, cfg), cfg)
    by_name = {e.name: e for e in entries}
    assert len(chosen) == 3 and any(by_name[r["name"]].fmt.rotated for r in rows)
    for r in rows:
        w = state[r["name"]].float()
        error = w - formats.dequantize(by_name[r["name"]]).float()
        assert r["rel_error"] == pytest.approx(gptq.relative_error(error, w), rel=1e-5), r["name"]
        assert r["h_error"] == pytest.approx(gptq.hessian_error(error, hessians[r["name"]]), rel=1e-5), r["name"]


def test_a_missing_hessian_names_the_tensor_and_the_fix():
    model = _model()
    state = {k: v.detach() for k, v in model.state_dict().items()}
    decisions = decide(model, _quant())
    hessians = {n: torch.eye(w.shape[1]) for n, w in state.items() if decisions[n].spec is not None}
    del hessians["blocks.2.mlp.up.weight"]
    with pytest.raises(PgolfError, match=r"no Hessian for 'blocks\.2\.mlp\.up\.weight' .*`dvc repro calibrate`"):
        quantize_state(state, hessians, decisions, _quant())


def test_the_inverse_key_reaches_gptq(monkeypatch):
    """quantize.inverse picks GPTQ's H^-1 factor (#2054); both give the same codes here."""
    seen = []
    original = gptq.inverse_upper_factor
    monkeypatch.setattr(gptq, "inverse_upper_factor", lambda h, method, shape=(): seen.append(method) or
                        original(h, method, shape))  # fmt: skip
    model = _model()
    w, h = model.state_dict()["blocks.0.mlp.up.weight"], torch.eye(32) + 0.1
    d = decide(model, _quant())["blocks.0.mlp.up.weight"]
    codes = [quantize_matrix("m", w, h, d, _quant(inverse=inverse)).entry.fmt.q
             for inverse in ("cholesky", "reverse_cholesky")]  # fmt: skip
    assert seen == ["cholesky", "reverse_cholesky"] and torch.equal(*codes)


def test_lqer_group_32_end_to_end(shard_dir):
    """#2060's LQER retune (rank 2, group 32, top 4): the corrections' B scales are twice those of group 64, and
    model.bin gives back the same dequantized tensors."""
    from pgolf.compress import pergroup, submission

    model, hessians = _trained_like(shard_dir)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    cfg = _quant(lqer={**_quant().lqer.model_dump(), "rank": 2, "top_k": 4, "group": 32})
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
