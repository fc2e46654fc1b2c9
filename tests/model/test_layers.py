"""pgolf.model.layers: the SmearGate (BOS-masked and static), rotary NTK rescale, BigramHash, the shared value
embedding, OrthoInit, the MLP (LeakyReLU² slope, ReLU², the fused kernel's dtype under autocast) and the
GPT-J block."""

from __future__ import annotations

import math

import pytest
import torch

from pgolf.kernels.mlp import eager_up_activation
from pgolf.model import layers
from pgolf.model.gpt import GPT
from pgolf.model.layers import MLP, Block, Linear, bigram_buckets, ortho_init_
from tests.helpers.config import model_cfg
from tests.helpers.model import perturbed, random_ids, toy_model, two_docs

BOS = 1


def test_smear_gate_is_masked_at_bos_and_active_inside_documents():
    model = perturbed(model_cfg())
    a, b = two_docs()
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


def test_ntk_rescale_only_beyond_train_length():
    rotary = GPT(model_cfg(rope_ntk_scale=True, rope_train_seq_len=8)).blocks[0].attn.rotary
    plain = GPT(model_cfg()).blocks[0].attn.rotary
    for length, same in ((8, True), (16, False)):
        a, b = (
            rotary.angles(length, torch.device("cpu"), torch.float64),
            plain.angles(length, torch.device("cpu"), torch.float64),
        )
        assert torch.allclose(a[1], b[1]) is same


def test_static_smear_formula_and_it_leaks_across_bos_while_the_default_does_not():
    static = toy_model(smear_gate_kind="static")
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
    masked = toy_model()
    with torch.no_grad():
        masked.smear.lam.fill_(1.0)
    assert torch.equal(masked.embed(ids)[0, 4], masked.embed(changed)[0, 4])


def test_bigram_buckets_by_hand_and_reset_at_bos():
    ids = torch.tensor([[5, 7, 1, 9, 2]])
    got = bigram_buckets(ids, 2048, BOS)[0].tolist()
    # position 0 and the BOS position (its left neighbour is the previous document's) get the reserved 2047
    # 36313*7 XOR 27191*5 = 254191 ^ 135955 = 127996; 36313*9 ^ 27191*1 = 300694; 36313*2 ^ 27191*9 = 172125
    assert got == [2047, 127996 % 2047, 2047, 300694 % 2047, 172125 % 2047] == [2047, 1082, 2047, 1832, 177]
    assert bigram_buckets(ids, 2048, BOS)[0, 1] == ((36313 * 7) ^ (27191 * 5)) % 2047


def test_bigram_hash_is_added_to_the_embedding_and_trains():
    model = toy_model(bigram_hash={"buckets": 16, "dim": 8, "scale_init": 0.05})
    roles = model.param_roles()
    assert roles["bigram.table"] == "embedding" and roles["bigram.proj.weight"] == "mlp"
    assert roles["bigram.scale"] == "control"
    ids = torch.tensor([[1, 5, 7, 9, 1, 5, 7]])
    assert torch.equal(model.embed(ids), toy_model().embed(ids))  # zero table: the feature starts at 0
    model.train()
    model(ids[:, :-1], ids[:, 1:]).backward()
    assert model.bigram.table.grad.abs().sum() > 0  # not dead: the projection is not zero
    with torch.no_grad():
        model.bigram.table.normal_()
    # documents never see each other: the second document's embeddings ignore the first one's tokens
    other = torch.tensor([[1, 6, 8, 3, 1, 5, 7]])
    assert torch.equal(model.embed(ids)[0, 4:], model.embed(other)[0, 4:])


def test_value_embedding_adds_alpha_s_P_E_on_chosen_layers_only():
    model = toy_model(value_embed={"dim": 8, "layers": [2, 4], "scale_init": 0.1})
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
    model = toy_model(value_embed={"dim": 8, "layers": [5], "scale_init": 0.1})
    ids = torch.tensor([[1, 5, 9, 12]])
    assert torch.equal(model(ids), toy_model()(ids))  # a no-op at init (zero P) with the same other weights
    assert model.param_roles()["value_embed.table"] == "embedding"


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


@pytest.fixture
def kernel_calls(monkeypatch):
    """CPU tensors taken for CUDA ones by the MLP's dispatch (``model.fused_mlp`` still decides), with a recorder in
    place of the Triton kernel's entry point."""
    calls: list[tuple[torch.dtype, torch.dtype]] = []
    dispatch = layers.use_fused_mlp

    def record(x, w, slope):
        calls.append((x.dtype, w.dtype))
        return eager_up_activation(x, w, slope)

    monkeypatch.setattr(layers, "use_fused_mlp", lambda is_cuda, training, mode: dispatch(True, training, mode))
    monkeypatch.setattr(layers, "fused_up_activation", record)
    return calls


def test_only_triton_mode_takes_the_kernel_and_only_for_cuda_training():
    """``model.fused_mlp: compiled`` never takes the Triton kernel; ``triton`` takes it for CUDA in training."""
    for is_cuda in (False, True):
        for training in (False, True):
            assert not layers.use_fused_mlp(is_cuda, training, "compiled")
            assert layers.use_fused_mlp(is_cuda, training, "triton") == (is_cuda and training)


@pytest.mark.parametrize("mode", ["compiled", "triton"])
def test_fused_mlp_mode_decides_whether_the_model_calls_the_kernel(kernel_calls, mode):
    """A training step of the whole model on (taken-for-CUDA) tensors: ``compiled`` leaves the kernel uncalled
    (every MLP runs the eager math), ``triton`` sends every MLP through it."""
    torch.manual_seed(0)
    model = GPT(model_cfg(fused_mlp=mode)).train()
    ids = random_ids()
    model(ids, ids).backward()
    calls, mlps = len(kernel_calls), sum(isinstance(m, MLP) for m in model.modules())
    assert calls == 0 if mode == "compiled" else calls >= mlps, f"{calls} kernel calls, {mlps} MLPs"


@pytest.mark.slow
@pytest.mark.parametrize("compiled", [False, True])
def test_fused_mlp_receives_the_autocast_dtype(kernel_calls, compiled):
    """fp32 parameters and residual under bf16 autocast: the kernel gets bf16 operands (a custom op is outside
    autocast, so without the cast it would get fp32 and run without tensor cores); without autocast, fp32."""
    torch.manual_seed(0)
    model = GPT(model_cfg(fused_mlp="triton")).train()
    forward = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager") if compiled else model
    ids = random_ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward(ids, ids).backward()
    assert kernel_calls and set(kernel_calls) == {(torch.bfloat16, torch.bfloat16)}
    kernel_calls.clear()
    forward(ids, ids)
    assert set(kernel_calls) == {(torch.float32, torch.float32)}
    torch._dynamo.reset()
