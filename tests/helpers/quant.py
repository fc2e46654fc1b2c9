"""The quantizer tests' material: seeded matrices and Hessians, the toy model with jittered weights, small calibrate
and quantize (AWQ-lite) sections."""

from __future__ import annotations

import torch

from pgolf.model.gpt import GPT
from pgolf.quant.formats import QuantizedMatrix
from pgolf.quant.gptq import gptq_quantize, sdclip_scales
from pgolf.quant.hessian import CalibrateConfig
from pgolf.quant.policy import QuantizeConfig
from tests.helpers.config import calibrate_cfg, model_cfg, quantize_cfg, raw_section

K = 12.85


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def correlated_hessian(cols: int, seed: int = 1, n: int = 1024) -> torch.Tensor:
    """H = X^T X / n for X = Z L, a random mixing of Gaussian inputs (strongly correlated columns)."""
    g = gen(seed)
    z = torch.randn(n, cols, generator=g)
    mix = torch.randn(cols, cols, generator=g) / cols**0.5 + 0.1 * torch.eye(cols)
    x = z @ mix
    return x.T @ x / n


def dense(q: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return q.float() * s.float()[:, None]


def quantized_matrix(
    bits: int = 4, seed: int = 8, rows: int = 64, cols: int = 128
) -> tuple[torch.Tensor, QuantizedMatrix]:
    w = torch.randn(rows, cols, generator=gen(seed))
    w[:, :4] += 3 * torch.randn(rows, 1, generator=gen(seed + 1))  # a low-rank structure in the error
    s = sdclip_scales(w, K, bits)
    fmt = QuantizedMatrix(q=gptq_quantize(w, correlated_hessian(cols), s, bits), scale=s, bits=bits, rotated=False)
    return w, fmt


def outlier_inputs(cols: int = 256, seed: int = 3) -> torch.Tensor:
    """H = X^T X / n of correlated inputs whose columns 70-79 are 8x louder than the rest."""
    g = gen(seed)
    x = torch.randn(2048, cols, generator=g) @ (torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols))
    x[:, 70:80] *= 8.0
    return x.T @ x / x.shape[0]


def noisy_model(seed=0) -> GPT:
    """The toy model with every weight jittered by 0.1 N(0, 1) (seed ``seed``)."""
    torch.manual_seed(seed)
    model = GPT(model_cfg())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def calib(**overrides) -> CalibrateConfig:
    """3 batches of 256 tokens per rank in windows of 32."""
    return calibrate_cfg(**{"batches": 3, "batch_tokens": 256, "seq_len": 32, **overrides})


def awq_calib() -> CalibrateConfig:
    """One batch of 128 tokens in windows of 32."""
    return calibrate_cfg(batches=1, batch_tokens=128, seq_len=32)


def awq_quant(awq_cfg: dict | None = None, **overrides) -> QuantizeConfig:
    """params.yaml's quantize section with ``awq_cfg`` merged into its ``awq`` key and ``overrides`` on top."""
    return quantize_cfg(**{**overrides, "awq": awq_cfg or {}})


def awq_quant_all(**awq_cfg) -> QuantizeConfig:
    """AWQ-lite on (groups of 16 columns, any matrix size), Hadamard rotation, LQER on every matrix."""
    lqer_all = {**raw_section("quantize")["lqer"], "top_k": 100}  # every matrix, protected ones too
    return awq_quant({"enabled": True, "min_elements": 0, "group_size": 16, **awq_cfg}, hadamard=True, lqer=lqer_all)
