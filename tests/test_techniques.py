"""The #374 / #2143 techniques behind their knobs: BigramHash, shared value embedding, OrthoInit, the static SmearGate,
late STE QAT (also under torch.compile), percentile-clipped RTN, and a 12,288-token vocabulary."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgolf.config import read_params
from pgolf.model.gpt import GPT
from pgolf.model.layers import MLP, Block, Linear, bigram_buckets, ortho_init_
from pgolf.quant import gptq
from pgolf.quant.policy import QuantizeConfig, decide
from pgolf.train.qat import FakeQuant, fake_quantize, install_fake_quant, ste_fake_quantize
from tests.conftest import model_cfg

BOS = 1


def _model(**overrides) -> GPT:
    torch.manual_seed(0)
    return GPT(model_cfg(**overrides)).eval()


# ------------------------------------------------------------------------------------------- BigramHash


def test_bigram_buckets_by_hand_and_reset_at_bos():
    ids = torch.tensor([[5, 7, 1, 9, 2]])
    got = bigram_buckets(ids, 2048, BOS)[0].tolist()
    # position 0 and the BOS position (its left neighbour is the previous document's) get the reserved 2047
    # 36313*7 XOR 27191*5 = 254191 ^ 135955 = 127996; 36313*9 ^ 27191*1 = 300694; 36313*2 ^ 27191*9 = 172125
    assert got == [2047, 127996 % 2047, 2047, 300694 % 2047, 172125 % 2047] == [2047, 1082, 2047, 1832, 177]
    assert bigram_buckets(ids, 2048, BOS)[0, 1] == ((36313 * 7) ^ (27191 * 5)) % 2047


def test_bigram_hash_is_added_to_the_embedding_and_trains():
    model = _model(bigram_hash={"buckets": 16, "dim": 8, "scale_init": 0.05})
    roles = model.param_roles()
    assert roles["bigram.table"] == "embedding" and roles["bigram.proj.weight"] == "mlp"
    assert roles["bigram.scale"] == "control"
    ids = torch.tensor([[1, 5, 7, 9, 1, 5, 7]])
    assert torch.equal(model.embed(ids), _model().embed(ids))  # zero table: the feature starts at 0
    model.train()
    model(ids[:, :-1], ids[:, 1:]).backward()
    assert model.bigram.table.grad.abs().sum() > 0  # not dead: the projection is not zero
    with torch.no_grad():
        model.bigram.table.normal_()
    # documents never see each other: the second document's embeddings ignore the first one's tokens
    other = torch.tensor([[1, 6, 8, 3, 1, 5, 7]])
    assert torch.equal(model.embed(ids)[0, 4:], model.embed(other)[0, 4:])


# ------------------------------------------------------------------------------------------- value embedding


def test_value_embedding_adds_alpha_s_P_E_on_chosen_layers_only():
    model = _model(value_embed={"dim": 8, "layers": [2, 4], "scale_init": 0.1})
    assert [i for i, b in enumerate(model.blocks) if b.attn.ve_alpha is not None] == [2, 4]
    ve = model.value_embed
    with torch.no_grad():
        ve.proj.weight.normal_()
        model.blocks[4].attn.ve_alpha.fill_(0.7)
        for block in model.blocks:  # non-zero output projections, so a change of v shows in the output
            block.attn.o.weight.normal_()
    ids = torch.tensor([[1, 5, 9, 12, 3, 40]])
    expected = 0.1 * ve.table[ids] @ ve.proj.weight.T  # s_ve P E[t], (B, T, kv_dim)
    assert torch.allclose(ve(ids), expected, atol=1e-6)
    deltas = {}
    for layer, block in enumerate(model.blocks):
        captured = []
        hook = block.attn.v.register_forward_hook(lambda _m, _a, out, c=captured: c.append(out))
        n = torch.randn(1, 6, model.cfg.model_dim)
        plain = block.attn(n, None, None, 0, None)
        with torch.no_grad():  # the attention with v replaced by v + delta must equal the VE forward
            withve = block.attn(n, None, None, 0, expected)
        hook.remove()
        deltas[layer] = (withve - plain).abs().max().item()
        if block.attn.ve_alpha is not None:  # reproduce: v + alpha * ve through a forward hook on v
            alpha = block.attn.ve_alpha.item()
            hook = block.attn.v.register_forward_hook(lambda _m, _a, out, a=alpha: out + a * expected)
            assert torch.allclose(block.attn(n, None, None, 0, None), withve, atol=1e-6)
            hook.remove()
    assert deltas[2] > 0 and deltas[4] > 0
    assert all(deltas[i] == 0 for i in (0, 1, 3, 5))


def test_value_embedding_projection_starts_at_zero():
    model = _model(value_embed={"dim": 8, "layers": [5], "scale_init": 0.1})
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(model(ids), _model()(ids))  # a no-op at init (zero P) with the same other weights
    assert model.param_roles()["value_embed.table"] == "embedding"


# ------------------------------------------------------------------------------------------- OrthoInit


def test_ortho_init_orthogonal_scaled_small_and_zero():
    torch.manual_seed(0)
    up = Linear(64, 128, "mlp", "up")
    down = Linear(128, 64, "mlp", "down")  # a non-zero output projection: scaled by 1/sqrt(2L)
    small = Linear(32, 64, "mlp", "up")
    zero = Linear(128, 64, "attn", "o", zero_init=True)
    for linear in (up, down, small, zero):
        ortho_init_(linear, num_layers=11)
    assert torch.allclose(up.weight.T @ up.weight, torch.eye(64), atol=1e-5)
    scale = 1 / math.sqrt(22)
    assert torch.allclose(down.weight @ down.weight.T, scale**2 * torch.eye(64), atol=1e-6)
    assert not torch.allclose(small.weight.T @ small.weight, torch.eye(32), atol=1e-2)  # kaiming, not orthogonal
    assert small.weight.abs().max() <= 1 / math.sqrt(32) + 1e-6
    assert torch.equal(zero.weight, torch.zeros(64, 128))


def test_ortho_init_in_the_model_respects_zero_init():
    model = _model(ortho_init=True, model_dim=64, num_heads=4, num_kv_heads=2, rope_dims=4,
                   value_embed={"dim": 64, "layers": [1], "scale_init": 0.1})  # fmt: skip
    q = model.blocks[0].attn.q.weight
    assert torch.allclose(q @ q.T, torch.eye(64), atol=1e-5)
    assert model.blocks[0].attn.o.weight.abs().sum() == 0 and model.blocks[0].mlp.down.weight.abs().sum() == 0
    assert model.value_embed.proj.weight.abs().sum() == 0  # #374 overwrote it; zero-init is kept here


# ------------------------------------------------------------------------------------------- static SmearGate


def test_static_smear_formula_and_it_leaks_across_bos_while_the_default_does_not():
    static = _model(smear_gate_kind="static")
    with torch.no_grad():
        static.static_smear.gate.uniform_(-2, 2)
    ids = torch.tensor([[1, 5, 7, 9, 1, 5, 7, 9]])
    x = torch.nn.functional.rms_norm(static.tok_emb(ids), (static.cfg.model_dim,))
    g = torch.sigmoid(static.static_smear.gate)
    prev = torch.cat([torch.zeros_like(x[:, :1]), x[:, :-1]], dim=1)
    assert torch.allclose(static.embed(ids), (1 - g) * x + g * prev, atol=1e-6)
    changed = ids.clone()
    changed[0, 3] = 20  # last token of document one
    assert not torch.equal(static.embed(ids)[0, 4], static.embed(changed)[0, 4])  # leaks into the next BOS
    masked = _model()
    with torch.no_grad():
        masked.smear.lam.fill_(1.0)
    assert torch.equal(masked.embed(ids)[0, 4], masked.embed(changed)[0, 4])


# ------------------------------------------------------------------------------------------- late QAT


def test_fake_quantize_grid_and_ste():
    torch.manual_seed(0)
    w = torch.randn(8, 16) * torch.tensor([3.0, 0.001, 1, 1, 1, 1, 1, 0.5])[:, None]
    wq = fake_quantize(w, 6)
    s = (w.abs().amax(1, keepdim=True) / 31).clamp_min(1 / 31)
    assert torch.allclose(wq, torch.clamp(torch.round(w / s), -32, 31) * s)
    assert (wq[1] == 0).all()  # the 1/31 floor: a row of tiny weights rounds to zero
    for on in (0.0, 1.0):
        p = w.clone().requires_grad_()
        out = ste_fake_quantize(p, 6, torch.tensor(on))
        assert torch.allclose(out, wq if on else w, atol=1e-6)
        g = torch.randn_like(w)
        out.backward(g)
        assert torch.equal(p.grad, g)  # straight through


# aot_eager runs the TorchDynamo capture (where a Python attribute would be folded into a constant) and AOT autograd;
# the inductor backend passes too but takes about 75 s to compile on 2 CPU cores, too slow for the unit suite.
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_qat_switches_on_inside_a_compiled_model(backend):
    model = _model(num_layers=2, loop_start=0, loop_end=0, num_loops=0, parallel_start_layer=2, xsa_last_n=2).train()
    fake = install_fake_quant(model, 6)
    forward = model if backend == "eager" else torch.compile(model, backend=backend, dynamic=False)
    ids = torch.tensor([[1, 5, 9, 12, 3, 40, 7, 2]])

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        loss = forward(ids[:, :-1], ids[:, 1:])
        loss.backward()
        return loss.detach(), model.blocks[0].attn.q.weight.grad.clone()

    with torch.no_grad():
        for block in model.blocks:  # non-zero output projections, so every projection shapes the loss
            block.attn.o.weight.normal_(std=0.1)
            block.mlp.down.weight.normal_(std=0.1)
    loss_off, grad_off = run()
    assert torch.allclose(loss_off, model(ids[:, :-1], ids[:, 1:]).detach(), atol=1e-5)  # off: the plain model
    fake.switch_on()
    assert isinstance(fake, FakeQuant) and fake.active
    loss_on, grad_on = run()
    assert not torch.allclose(loss_on, loss_off) and not torch.allclose(grad_on, grad_off)
    with torch.no_grad():  # on: the model whose weights are the fake-quantized ones
        reference = GPT(model.cfg).train()
        reference.load_state_dict(model.state_dict())
        for module in reference.modules():
            if isinstance(module, Linear):
                module.weight.copy_(fake_quantize(module.weight, 6))
    assert torch.allclose(loss_on, reference(ids[:, :-1], ids[:, 1:]), atol=1e-4)


# ------------------------------------------------------------------------------------------- RTN + percentile


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


# ------------------------------------------------------------------------------------------- vocabularies


def test_model_builds_and_runs_at_vocab_12288_with_every_table_quantized_as_embedding():
    model = _model(vocab_size=12288, bigram_hash={"buckets": 64, "dim": 8, "scale_init": 0.05},
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


@pytest.mark.parametrize("slope", [0.5, 0.3])
def test_leaky_slope_reaches_the_mlp_forward_and_backward(slope):
    """#1948 / #2140: phi(u) = u^2 (u > 0), (slope u)^2 else; derivative 2 slope^2 u on the negative side."""
    cfg = model_cfg(mlp_leaky_slope=slope)
    mlp = MLP(cfg).double()
    with torch.no_grad():
        mlp.down.weight.normal_()
    x = torch.randn(2, 5, cfg.model_dim, dtype=torch.float64)
    u = (x @ mlp.up.weight.T).detach().requires_grad_()
    phi = torch.where(u > 0, u * u, slope * slope * u * u)
    torch.testing.assert_close(mlp(x), phi @ mlp.down.weight.T, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(phi.sum(), u)
    torch.testing.assert_close(grad, torch.where(u > 0, 2 * u, 2 * slope**2 * u))


def test_leaky_slope_is_range_checked():
    from pgolf.config import ConfigError

    with pytest.raises(ConfigError, match="model.mlp_leaky_slope"):
        model_cfg(mlp_leaky_slope=1.5)


def test_relu2_mlp_3x_is_down_of_squared_relu_of_up():
    """#374's MLP: hidden width 3 x model_dim, ReLU(x)^2 (the record's is LeakyReLU(0.5)^2)."""
    cfg = model_cfg(mlp_mult=3.0, mlp_activation="relu2")
    mlp = MLP(cfg)
    assert mlp.up.weight.shape == (3 * cfg.model_dim, cfg.model_dim)
    with torch.no_grad():
        mlp.down.weight.normal_()
    x = torch.randn(2, 5, cfg.model_dim)
    expected = torch.relu(x @ mlp.up.weight.T).square() @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), expected)


def test_gptj_block_adds_attention_and_mlp_of_the_same_input():
    """GPT-J parallel residual (#1492 from layer 7): out = u + a*Attn(N(u)) + b*MLP(N(u)), one stream."""
    cfg = model_cfg(parallel_mode="gptj")
    torch.manual_seed(0)
    seq, par = Block(cfg, 1, gptj=False), Block(cfg, 1, gptj=True)
    par.load_state_dict(seq.state_dict())
    with torch.no_grad():
        for block in (seq, par):
            block.mlp.down.weight.normal_(std=0.1)
            block.attn.o.weight.normal_(std=0.1)
    x, x0 = torch.randn(1, 6, cfg.model_dim), torch.randn(1, 6, cfg.model_dim)
    u = par.mix(x, x0)
    torch.testing.assert_close(par(x, x0, None, None, 0), u + par.attend(u, None, None, 0) + par.feed(u, None, 0))
    v = seq.mix(x, x0) + seq.attend(seq.mix(x, x0), None, None, 0)
    torch.testing.assert_close(seq(x, x0, None, None, 0), v + seq.feed(v, None, 0))
    assert not torch.allclose(par(x, x0, None, None, 0), seq(x, x0, None, None, 0))
