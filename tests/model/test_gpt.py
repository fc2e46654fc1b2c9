"""pgolf.model.gpt: the record's parameter count and roles, the initial loss, document isolation, causality,
per-token losses, the architecture variants, OrthoInit in the model."""

import math

import pytest
import torch

from pgolf.config import parse_section, read_params
from pgolf.model.config import ModelParams
from pgolf.model.gpt import GPT
from tests.helpers.common import ROOT
from tests.helpers.config import model_cfg
from tests.helpers.model import perturbed, toy_model, two_docs

# The record's resolved model configuration (vocab and BOS come from its tokenizer), written out: the preset must
# give exactly this.
RECORD_MODEL = {
    "vocab_size": 8192,
    "bos_id": 1,
    "num_layers": 11,
    "model_dim": 512,
    "num_heads": 8,
    "num_kv_heads": 4,
    "mlp_mult": 4.0,
    "mlp_activation": "leaky_relu2",
    "mlp_leaky_slope": 0.5,
    "fused_mlp": "compiled",
    "tied_embed_init_std": 0.005,
    "logit_softcap": 30.0,
    "rope_base": 10000.0,
    "rope_dims": 16,
    "rope_ntk_scale": False,
    "rope_train_seq_len": 2048,
    "ln_scale": True,
    "qk_gain_init": 5.0,
    "xsa_last_n": 11,
    "attn_gate": True,
    "attn_gate_scale": 0.5,
    "attn_gate_init_std": 0.0,
    "gate_window": 12,
    "smear_gate": True,
    "smear_gate_kind": "bos_masked",
    "bigram_hash": {"buckets": 0, "dim": 128, "scale_init": 0.05},
    "value_embed": {"dim": 128, "layers": [], "scale_init": 0.1},
    "ortho_init": False,
    "skip_gates": True,
    "parallel_mode": "two_lane",
    "parallel_start_layer": 8,
    "num_loops": 2,
    "loop_start": 3,
    "loop_end": 5,
}  # fmt: skip


def test_record_parameter_count_and_roles():
    preset = read_params(ROOT / "presets" / "record_1855.yaml")
    params = parse_section(preset["model"], "model", ModelParams)
    assert params.resolve(vocab_size=8192, bos_id=1).model_dump() == RECORD_MODEL
    model = GPT(params.resolve(vocab_size=preset["tokenizer"]["vocab_size"], bos_id=1))
    assert sum(p.numel() for p in model.parameters()) == 35_945_671
    roles = model.param_roles()
    assert set(roles) == {name for name, _ in model.named_parameters()}
    count = {r: sum(p.numel() for n, p in model.named_parameters() if roles[n] == r) for r in set(roles.values())}
    assert count["attn"] + count["mlp"] == 31_719_424
    assert count["embedding"] == 4_194_304
    assert count["control"] + count["attn_gate"] == 31_943 and count["attn_gate"] == 11 * 8 * 12


def test_initial_loss_is_log_vocab():
    cfg = model_cfg(vocab_size=512)
    torch.manual_seed(0)
    ids = torch.randint(2, 512, (2, 24))
    loss = GPT(cfg)(ids, ids.roll(-1, 1), looped=True)
    assert abs(loss.item() - math.log(512)) < 0.01


@pytest.mark.parametrize("parallel_mode", ["two_lane", "gptj", "none"])
@pytest.mark.parametrize("looped", [False, True])
def test_packed_documents_equal_separate_runs(parallel_mode, looped):
    """With cu_seqlens, a packed row gives each document exactly the logits it gets alone."""
    model = perturbed(model_cfg(parallel_mode=parallel_mode))
    a, b = two_docs()
    packed = model(torch.cat([a, b])[None], cu_seqlens=torch.tensor([0, 9, 16, 16], dtype=torch.int32), looped=looped)
    alone_a, alone_b = model(a[None], looped=looped), model(b[None], looped=looped)
    torch.testing.assert_close(packed[0, :9], alone_a[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed[0, 9:], alone_b[0], rtol=1e-9, atol=1e-9)


def test_causal():
    model = perturbed(model_cfg())
    ids = torch.randint(2, 64, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 5) % 64
    base, new = model(ids, looped=True), model(changed, looped=True)
    torch.testing.assert_close(base[:, :7], new[:, :7], rtol=0, atol=0)
    assert not torch.allclose(base[:, 7:], new[:, 7:])


def test_per_token_loss_matches_mean_and_logits():
    model = perturbed(model_cfg())
    ids = torch.randint(2, 64, (2, 10))
    per_token = model(ids, ids, reduction="none")
    assert per_token.shape == (2, 10)
    torch.testing.assert_close(per_token.mean(), model(ids, ids))
    logits = model(ids)
    assert logits.abs().max() <= 30.0
    torch.testing.assert_close(
        per_token, torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(2, 10)
    )


@pytest.mark.parametrize(
    "overrides",
    [{"mlp_activation": "relu2"}, {"skip_gates": False}, {"smear_gate": False, "attn_gate": False},
     {"rope_ntk_scale": True, "rope_train_seq_len": 8}, {"xsa_last_n": 0, "ln_scale": False}, {"num_loops": 0}],
)  # fmt: skip
def test_variants_run(overrides):
    ids = torch.randint(2, 64, (1, 16))
    variant = perturbed(model_cfg(**overrides))
    out = variant(ids, looped=True)
    assert out.shape == (1, 16, 64) and torch.isfinite(out).all()
    if overrides.get("num_loops") == 0:  # no recurrence: the looped schedule is the plain one
        torch.testing.assert_close(out, variant(ids, looped=False), rtol=0, atol=0)


def test_changing_any_token_of_one_document_changes_no_logit_of_another():
    """Packed row of three documents, SmearGate and every feature on, recurrence on."""
    model = perturbed(model_cfg())
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(2, 64, (1, 20), generator=g)
    ids[0, [0, 6, 13]] = 1  # BOS opens each document
    cu = torch.tensor([0, 6, 13, 20], dtype=torch.int32)
    base = model(ids, cu_seqlens=cu, looped=True)
    docs = [(0, 6), (6, 13), (13, 20)]
    for start, end in docs:
        for pos in range(start + 1, end):  # every non-BOS token of this document
            changed = ids.clone()
            changed[0, pos] = (changed[0, pos] + 7) % 62 + 2
            out = model(changed, cu_seqlens=cu, looped=True)
            for other_start, other_end in docs:
                if other_start != start:
                    assert torch.equal(out[0, other_start:other_end], base[0, other_start:other_end])
            assert not torch.equal(out[0, pos:end], base[0, pos:end])


def test_ortho_init_in_the_model_respects_zero_init():
    model = toy_model(ortho_init=True, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4,
                   value_embed={"dim": 64, "layers": [1], "scale_init": 0.1})  # fmt: skip
    q = model.blocks[0].attn.q.weight
    assert torch.allclose(q @ q.T, torch.eye(64), atol=1e-5)
    assert model.blocks[0].attn.o.weight.abs().sum() == 0 and model.blocks[0].mlp.down.weight.abs().sum() == 0
    assert model.value_embed.proj.weight.abs().sum() == 0  # #374 overwrote it; zero-init is kept here
