"""Batched LoRA adapters for test-time training: one low-rank adapter per (site, virtual layer, batch row).

For row b of the batch: ``delta(x)_b = (x_b A_b^T) B_b^T * alpha / rank``, with ``A ~ U(-1/sqrt(in), 1/sqrt(in))`` and
``B = 0``, so fresh adapters change nothing. The ``o`` and ``mlp`` sites are parallel adapters fed by the block's
normed input (see :mod:`pgolf.model.layers`); ``head`` adds to the logits before the soft-cap.

References: the record's BatchedLinearLoRA / BatchedTTTLoRA (PR #1855), LoRA (Hu et al., 2021).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from pgolf.model.config import ModelConfig
from pgolf.model.layers import Site


def site_dims(cfg: ModelConfig, site: Site) -> tuple[int, int]:
    """(in, out) widths of an adapter site."""
    D = cfg.model_dim
    return {"q": (D, D), "k": (D, cfg.kv_dim), "v": (D, cfg.kv_dim), "o": (D, D), "mlp": (D, D),
            "head": (D, cfg.vocab_size)}[site]  # fmt: skip


class BatchedLoRA(nn.Module):
    """Adapters built where they are used (``device``), A drawn from ``generator`` (a seeded generator of that
    device; None: the global RNG): no host copy of the (slots x batch x rank x width) tensors."""

    def __init__(
        self, cfg: ModelConfig, *, sites: Iterable[Site], num_slots: int, batch: int, rank: int, alpha: float,
        device: torch.device | str | None = None, generator: torch.Generator | None = None,
    ) -> None:  # fmt: skip
        super().__init__()
        self.scale, self.generator = alpha / rank, generator
        self.A, self.B = nn.ParameterDict(), nn.ParameterDict()
        for site in sites:
            slots = 1 if site == "head" else num_slots
            fan_in, fan_out = site_dims(cfg, site)
            self.A[site] = nn.Parameter(torch.empty(slots, batch, rank, fan_in, device=device))
            self.B[site] = nn.Parameter(torch.zeros(slots, batch, fan_out, rank, device=device))
        self.reset(reset_a=True)

    @torch.no_grad()
    def reset(self, reset_a: bool, rows: Tensor | None = None) -> None:
        """Zero B (and redraw A when ``reset_a``) for all rows or the given ``rows``."""
        select = slice(None) if rows is None else rows
        for site, a in self.A.items():
            self.B[site][:, select].zero_()
            if reset_a:
                bound = 1.0 / math.sqrt(a.size(-1))
                a[:, select] = torch.empty_like(a[:, select]).uniform_(-bound, bound, generator=self.generator)

    def delta(self, site: Site, slot: int, x: Tensor) -> Tensor | None:
        if site not in self.A:
            return None
        a, b = self.A[site][slot].to(x.dtype), self.B[site][slot].to(x.dtype)  # (B, r, in), (B, out, r)
        return torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2)) * self.scale
