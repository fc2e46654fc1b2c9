"""pgolf.quant.policy: the quantize section's checks (bit widths, AWQ-lite), and the role -> format decisions
(the record's precision, per-kind bits, every table an embedding)."""

import pytest
import torch

from pgolf.config import ConfigError, parse_section, read_params
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.quant import gptq
from pgolf.quant.gptq import clip_range
from pgolf.quant.policy import QuantizeConfig, decide
from pgolf.quant.quantize import quantize_matrix
from tests.helpers.config import RECORD_MODEL, quantize_cfg
from tests.helpers.model import toy_model
from tests.helpers.quant import awq_quant, noisy_model


@pytest.mark.parametrize(("section", "key", "value"), [("q", "bits", 99), ("embedding", "bits", 1),
                                                       ("lqer", "factor_bits", 9)])  # fmt: skip
def test_bit_widths_are_range_checked_at_load(section, key, value):
    raw = read_params("params.yaml")["quantize"]
    with pytest.raises(ConfigError) as err:
        quantize_cfg(**{section: {**raw[section], key: value}})
    assert str(err.value) == f"params.yaml: quantize.{section}.{key}: must be between 2 and 8 (got {value})"


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


def test_mixed_precision_is_per_kind_bits():
    """#2143: int5 for q, o and down, int6 for k, v and up, int7 embedding."""
    model = noisy_model()
    five = {"bits": 5, "clip_sigmas": 12.85, "rtn_clip_percentile": 100.0}
    six = {"bits": 6, "clip_sigmas": 12.85, "rtn_clip_percentile": 100.0}
    decisions = decide(model, quantize_cfg(q=five, o=five, down=five, k=six, v=six, up=six))
    bits = {d.kind: d.spec.bits for d in decisions.values() if d.spec}
    assert bits == {"embedding": 7, "q": 5, "o": 5, "down": 5, "k": 6, "v": 6, "up": 6}


def test_model_builds_and_runs_at_vocab_12288_with_every_table_quantized_as_embedding():
    model = toy_model(vocab_size=12288, bigram_hash={"buckets": 64, "dim": 8, "scale_init": 0.05},
                   value_embed={"dim": 8, "layers": [5], "scale_init": 0.1})  # fmt: skip
    ids = torch.randint(0, 12288, (2, 16))
    assert model(ids).shape == (2, 16, 12288)
    assert torch.isfinite(model(ids[:, :-1], ids[:, 1:]))
    decisions = decide(model, QuantizeConfig.model_validate(read_params("params.yaml")["quantize"]))
    tables = {n for n, d in decisions.items() if d.kind == "embedding"}
    assert tables == {"tok_emb.weight", "bigram.table", "value_embed.table"}
    assert decisions["bigram.proj.weight"].kind == "up" and decisions["value_embed.proj.weight"].kind == "v"
    w = model.tok_emb.weight.detach()
    scales = gptq.rtn_percentile_scales(w, 8, 99.99984)
    assert scales.shape == (12288,)


@pytest.mark.parametrize(("change", "message"), [
    ({"group_size": 0}, "quantize.awq.group_size: must be > 0 (got 0)"),
    ({"top_k": 0}, "quantize.awq.top_k: must be > 0 (got 0)"),
    ({"min_elements": -1}, "quantize.awq.min_elements: must be >= 0 (got -1)"),
    ({"bits": 9}, "quantize.awq.bits: must be between 2 and 8"),
    ({"scope": "layer"}, "quantize.awq.scope: Input should be 'global' or 'per_matrix'"),
])  # fmt: skip
def test_awq_config_is_checked_at_load(change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        awq_quant(change)


def test_awq_needs_gptq():
    with pytest.raises(ConfigError, match="quantize.awq.enabled needs quantize.method: gptq"):
        awq_quant({"enabled": True}, method="rtn")
    assert awq_quant({"enabled": False}, method="rtn").awq.enabled is False
