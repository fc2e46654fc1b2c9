"""Late quantization-aware training (#374): straight-through fake quantization of every projection weight, switched
on once the LR multiplier falls below ``train.qat.start_below_lr``.

Per row, with c = 2^(bits-1) - 1 (31 for int6)::

    s = max(max|w| / c, 1 / c)        w_q = clamp(round(w / s), -(c+1), c) * s
    forward weight = w + on * (w_q - w).detach()     (on in {0, 1}: w_q when on, w when off; dw = identity)

The switch ``on`` is a tensor buffer shared by every :class:`~pgolf.model.layers.Linear`, never a Python attribute:
torch.compile bakes a Python attribute read in ``forward`` into the graph as a constant (#374 flipped a class
attribute after compiling, which most likely left its QAT inert), whereas a buffer is a graph input, so flipping it
in place changes what the already-compiled graph computes. The price: the fake quantizer runs (multiplied by 0) from
the first step. The round-to-nearest here is training-time only; export and quantization see the raw weights.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.model.gpt import GPT
from pgolf.model.layers import Linear
from pgolf.quant.bits import check_bits


def fake_quantize(w: Tensor, bits: int) -> Tensor:
    """w_q = clamp(round(w / s), -(c+1), c) * s with per-row s = max(rowmax|w| / c, 1/c), in w's dtype."""
    c = 2 ** (bits - 1) - 1
    w32 = w.float()
    s = (w32.abs().amax(dim=-1, keepdim=True) / c).clamp_min(1.0 / c)
    return (torch.clamp(torch.round(w32 / s), -(c + 1), c) * s).to(w.dtype)


def ste_fake_quantize(w: Tensor, bits: int, on: Tensor) -> Tensor:
    """The weight the forward uses: ``fake_quantize(w)`` where ``on`` is 1, ``w`` where it is 0; gradient identity."""
    return w + on.to(w.dtype) * (fake_quantize(w, bits) - w).detach()


class FakeQuant(nn.Module):
    """The shared STE fake quantizer; ``switch_on`` flips its (non-persistent) buffer in place."""

    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = check_bits(bits, "train.qat")
        self.register_buffer("on", torch.zeros(()), persistent=False)

    @property
    def active(self) -> bool:
        return bool(self.on.item())

    def switch_on(self) -> None:
        self.on.fill_(1.0)

    def forward(self, w: Tensor) -> Tensor:
        return ste_fake_quantize(w, self.bits, self.on)


def install_fake_quant(model: GPT, bits: int) -> FakeQuant:
    """Give every projection of ``model`` one shared, switched-off fake quantizer (call before torch.compile)."""
    device = next(model.parameters()).device
    fake = FakeQuant(bits).to(device)
    for module in model.modules():
        if isinstance(module, Linear):
            module.fake_quant = fake
    return fake
