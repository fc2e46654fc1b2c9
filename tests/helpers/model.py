"""Toy models (the record's architecture at the size of :func:`tests.helpers.config.model_cfg`) and random inputs."""

from __future__ import annotations

import torch

from pgolf.model.gpt import GPT
from tests.helpers.config import model_cfg


def perturbed(cfg, seed=0, dtype=torch.float64) -> GPT:
    """A model whose zero-initialised parts are randomised, so every feature affects the output."""
    torch.manual_seed(seed)
    model = GPT(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return model


def two_docs(seed=1):
    """Two documents of 9 and 7 tokens, each opening with BOS (1)."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randint(2, 64, (9,), generator=g), torch.randint(2, 64, (7,), generator=g)
    a[0] = b[0] = 1  # BOS
    return a, b


def toy_model(**overrides) -> GPT:
    """The toy model (``model_cfg(**overrides)``) as initialised at seed 0, in eval mode."""
    torch.manual_seed(0)
    return GPT(model_cfg(**overrides)).eval()


def random_ids(n: int = 32, seed: int = 0) -> torch.Tensor:
    """One row of ``n`` random token ids of the toy vocabulary."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model_cfg().vocab_size, (1, n), generator=g)
