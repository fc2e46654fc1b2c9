"""The model: record parameter count and schedules, identity init, document isolation, causality, adapters."""

import math
from pathlib import Path

import pytest
import torch
from conftest import RECORD_MODEL, model_cfg

from pgolf.config import parse_section, read_params
from pgolf.model.config import ModelParams
from pgolf.model.gpt import GPT
from pgolf.model.lora import BatchedLoRA
from pgolf.model.schedule import layer_schedule

ROOT = Path(__file__).resolve().parents[1]


def _perturbed(cfg, seed=0, dtype=torch.float64) -> GPT:
    """A model whose zero-initialised parts are randomised, so every feature affects the output."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


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


def test_record_layer_schedules():
    off, on = layer_schedule(11, 3, 5, 2, False), layer_schedule(11, 3, 5, 2, True)
    assert off.encoder == (0, 1, 2, 3, 4) and off.decoder == (5, 6, 7, 8, 9, 10)
    assert on.encoder == (0, 1, 2, 3, 4, 5, 3, 4) and on.decoder == (5, 3, 4, 5, 6, 7, 8, 9, 10)
    assert on.num_skips == 8 and layer_schedule(11, 3, 5, 0, True) == off


def test_initial_loss_is_log_vocab():
    cfg = model_cfg(vocab_size=512)
    torch.manual_seed(0)
    ids = torch.randint(2, 512, (2, 24))
    loss = GPT(cfg)(ids, ids.roll(-1, 1), looped=True)
    assert abs(loss.item() - math.log(512)) < 0.01


def _docs(seed=1):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(2, 64, (9,), generator=g), torch.randint(2, 64, (7,), generator=g)
    a[0] = b[0] = 1  # BOS
    return a, b


@pytest.mark.parametrize("parallel_mode", ["two_lane", "gptj", "none"])
@pytest.mark.parametrize("looped", [False, True])
def test_packed_documents_equal_separate_runs(parallel_mode, looped):
    """With cu_seqlens, a packed row gives each document exactly the logits it gets alone."""
    model = _perturbed(model_cfg(parallel_mode=parallel_mode))
    a, b = _docs()
    packed = model(torch.cat([a, b])[None], cu_seqlens=torch.tensor([0, 9, 16, 16], dtype=torch.int32), looped=looped)
    alone_a, alone_b = model(a[None], looped=looped), model(b[None], looped=looped)
    torch.testing.assert_close(packed[0, :9], alone_a[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed[0, 9:], alone_b[0], rtol=1e-9, atol=1e-9)


def test_smear_gate_is_masked_at_bos_and_active_inside_documents():
    model = _perturbed(model_cfg())
    a, b = _docs()
    ids = torch.cat([a, b])[None]
    cu = torch.tensor([0, 16], dtype=torch.int32)  # one segment: only SmearGate could carry a[−1] into b[0]
    e1 = model.embed(ids)
    changed = ids.clone()
    changed[0, 8] = (changed[0, 8] + 1) % 64 or 2
    e2 = model.embed(changed)
    assert torch.equal(e1[0, 9], e2[0, 9])  # position 9 is BOS: nothing smeared in
    assert not torch.equal(e1[0, 8], e2[0, 8])  # the changed token itself
    assert not torch.equal(model(ids, cu_seqlens=cu)[0, 8], model(changed, cu_seqlens=cu)[0, 8])
    other = ids.clone()
    other[0, 3] = (other[0, 3] + 1) % 64 or 2
    assert not torch.equal(model.embed(other)[0, 4], e1[0, 4])  # smear inside a document


def test_causal():
    model = _perturbed(model_cfg())
    ids = torch.randint(2, 64, (2, 12))
    changed = ids.clone()
    changed[:, 7] = (changed[:, 7] + 5) % 64
    base, new = model(ids, looped=True), model(changed, looped=True)
    torch.testing.assert_close(base[:, :7], new[:, :7], rtol=0, atol=0)
    assert not torch.allclose(base[:, 7:], new[:, 7:])


def test_zero_adapters_give_identical_logits():
    cfg = model_cfg()
    model = _perturbed(cfg)
    schedule = model.schedule(True)
    lora = BatchedLoRA(cfg, sites=["q", "k", "v", "o", "mlp", "head"], num_slots=len(schedule.order), batch=2,
                       rank=3, alpha=6.0).to(torch.float64)  # fmt: skip
    ids = torch.randint(2, 64, (2, 10))
    torch.testing.assert_close(model(ids, looped=True, adapters=lora), model(ids, looped=True), rtol=0, atol=0)
    with torch.no_grad():
        for b in lora.B.values():
            b.normal_()
    assert not torch.allclose(model(ids, looped=True, adapters=lora), model(ids, looped=True))
    lora.reset(reset_a=False)
    torch.testing.assert_close(model(ids, looped=True, adapters=lora), model(ids, looped=True), rtol=0, atol=0)


def test_per_token_loss_matches_mean_and_logits():
    model = _perturbed(model_cfg())
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
    variant = _perturbed(model_cfg(**overrides))
    out = variant(ids, looped=True)
    assert out.shape == (1, 16, 64) and torch.isfinite(out).all()
    if overrides.get("num_loops") == 0:  # no recurrence: the looped schedule is the plain one
        torch.testing.assert_close(out, variant(ids, looped=False), rtol=0, atol=0)


def test_ntk_rescale_only_beyond_train_length():
    rotary = GPT(model_cfg(rope_ntk_scale=True, rope_train_seq_len=8)).blocks[0].attn.rotary
    plain = GPT(model_cfg()).blocks[0].attn.rotary
    for length, same in ((8, True), (16, False)):
        a, b = (
            rotary.angles(length, torch.device("cpu"), torch.float64),
            plain.angles(length, torch.device("cpu"), torch.float64),
        )
        assert torch.allclose(a[1], b[1]) is same


def test_bad_shapes_are_config_errors():
    with pytest.raises(Exception, match="num_heads must be a multiple of model.num_kv_heads"):
        model_cfg(num_kv_heads=3)
    with pytest.raises(Exception, match="loop_start..loop_end"):
        model_cfg(loop_end=9)


def test_changing_any_token_of_one_document_changes_no_logit_of_another():
    """Packed row of three documents, SmearGate and every feature on, recurrence on."""
    model = _perturbed(model_cfg())
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


def test_segment_attention_equals_a_dense_masked_reference():
    """The gather-per-segment path against one dense block-diagonal causal mask (float64, GQA, two rows)."""
    from pgolf.model.attention import sdpa_gather_attention

    g = torch.Generator().manual_seed(2)
    B, T, H, G, D = 2, 150, 4, 2, 8
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, T, G, D, generator=g, dtype=torch.float64) for _ in range(2))
    cu = torch.tensor([0, 17, 64, 100, 150, 151, 200, 230, 299, 300, 300, 300], dtype=torch.int32)
    seg = torch.searchsorted(cu[1:].long(), torch.arange(B * T), right=True).view(B, T)  # segment of each position
    mask = (seg[:, :, None] == seg[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None], enable_gqa=True)
    torch.testing.assert_close(sdpa_gather_attention(q, k, v, cu), ref.transpose(1, 2), rtol=1e-12, atol=1e-12)
