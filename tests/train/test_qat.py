"""pgolf.train.qat, late STE QAT: the fake-quantization grid, the straight-through gradient, and the switch
inside a compiled model."""

from __future__ import annotations

import pytest
import torch

from pgolf.model.gpt import GPT
from pgolf.model.layers import Linear
from pgolf.train.qat import FakeQuant, fake_quantize, install_fake_quant, ste_fake_quantize
from tests.helpers.model import toy_model


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
@pytest.mark.slow
@pytest.mark.parametrize("backend", ["eager", "aot_eager"])
def test_qat_switches_on_inside_a_compiled_model(backend):
    model = toy_model(num_layers=2, loop_start=0, loop_end=0, num_loops=0, parallel_start_layer=2, xsa_last_n=2).train()
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
