"""Input Hessians H = sum x x^T of every quantized matrix, for GPTQ (the calibrate stage).

Collected with forward hooks on the model's :class:`~pgolf.model.layers.Linear` projections, through the same
forward as training, with the layer schedule the model finished training with: a looped layer adds every pass. The
tied embedding's Hessian is that of the LM head's input (the final-normed hidden state). Other embedding tables
(#374's bigram and value embeddings) are read by lookup and have no input to hook: they get H = I, with which GPTQ
reduces to round-to-nearest on its grid. Only *training* tokens are
used: random windows of the train shards, drawn with a seeded generator. Sums are reduced across ranks (the
reference kept each rank's own Hessians).

Nothing is normalized: H = sum of x x^T over every row that reached the matrix, tokens x passes of the matrix per
forward (:func:`hessian_rows`), which AWQ-lite divides by to get per-channel RMS activations (:mod:`pgolf.quant.awq`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from pgolf import dist
from pgolf.config import ConfigError, Count, Section, Seed
from pgolf.data import shards
from pgolf.model.gpt import EMBEDDING, GPT
from pgolf.model.layers import Linear
from pgolf.segments import window_cu_seqlens


class CalibrateConfig(Section):
    batches: Count
    """Calibration batches (the record: 16)."""
    batch_tokens: Count
    """Tokens per batch and rank, in rows of seq_len (the record: 98,304 = 48 x 2048)."""
    seq_len: Count
    seed: Seed
    """Seed of the window sampler (independent of the training seed)."""
    doc_isolated: bool
    """Attention confined to documents inside each window (the record: false, plain causal windows)."""

    def model_post_init(self, _context: object) -> None:
        if self.batch_tokens % self.seq_len:
            raise ConfigError(f"calibrate.batch_tokens ({self.batch_tokens}) must be a multiple of calibrate.seq_len "
                              f"({self.seq_len}): a batch is whole rows of seq_len tokens")  # fmt: skip


def calibration_windows(shard_dir: Path, cfg: CalibrateConfig, rank: int, world_size: int) -> Iterator[Tensor]:
    """``batches`` batches of random (seq_len + 1)-token windows of the *training* shards, different per rank."""
    paths = shards.shard_paths(shard_dir, "train")
    if not paths:
        raise shards.ShardError(f"{shard_dir}: no train shards to calibrate on")
    data = [shards.read_shard(p, mmap=True) for p in paths]
    sizes = np.array([max(len(d) - cfg.seq_len - 1, 0) for d in data], dtype=np.float64)
    if not sizes.sum():
        raise shards.ShardError(f"{shard_dir}: train shards are shorter than calibrate.seq_len + 1")
    rng = np.random.default_rng([cfg.seed, rank])
    rows = max(1, cfg.batch_tokens // cfg.seq_len)
    for _ in range(cfg.batches):
        picks = rng.choice(len(data), size=rows, p=sizes / sizes.sum())
        starts = (rng.random(rows) * sizes[picks]).astype(np.int64)
        yield torch.from_numpy(np.stack([data[i][s : s + cfg.seq_len + 1].astype(np.int64)
                                         for i, s in zip(picks, starts, strict=True)]))  # fmt: skip


def _hooked_linears(model: GPT) -> dict[str, Linear]:
    return {f"{name}.weight": m for name, m in model.named_modules() if isinstance(m, Linear)}


def hessian_rows(model: GPT, looped: bool, tokens: int) -> dict[str, int]:
    """The rows :func:`collect_hessians` summed into each Hessian over ``tokens`` calibration tokens: tokens times
    the calls of the matrix per forward (a projection of a looped layer runs once per pass), counted on a one-token
    forward with the same hooks; the tied embedding's (the LM head input) is ``tokens``. The lookup tables (H = I)
    have no entry: they have no activation statistics."""
    linears = _hooked_linears(model)
    calls = dict.fromkeys(linears, 0)

    def count(name: str) -> None:
        calls[name] += 1

    hooks = [m.register_forward_pre_hook(lambda _m, _args, n=name: count(n)) for name, m in linears.items()]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.hidden(torch.zeros(1, 1, dtype=torch.long, device=device), None, looped, None)
    finally:
        for hook in hooks:
            hook.remove()
    return {EMBEDDING: tokens, **{name: tokens * n for name, n in calls.items()}}


def collect_hessians(
    model: GPT, batches: Iterator[Tensor], *, looped: bool, doc_isolated: bool, total: int | None = None
) -> tuple[dict, int]:
    """Sum x x^T over the inputs of every Linear and of the LM head; returns (Hessians, tokens seen)."""
    device = next(model.parameters()).device
    linears = _hooked_linears(model)
    hessians = {name: torch.zeros(m.weight.size(1), m.weight.size(1), device=device) for name, m in linears.items()}
    hessians[EMBEDDING] = torch.zeros(model.cfg.model_dim, model.cfg.model_dim, device=device)
    params = dict(model.named_parameters())
    for name, role in model.param_roles().items():
        if role == "embedding" and name != EMBEDDING:
            hessians[name] = torch.eye(params[name].size(1), device=device)

    def accumulate(name: str, x: Tensor) -> None:
        x = x.reshape(-1, x.size(-1)).float()
        hessians[name].addmm_(x.T, x)

    hooks = [
        m.register_forward_pre_hook(lambda _m, args, n=name: accumulate(n, args[0])) for name, m in linears.items()
    ]
    tokens = 0
    try:
        model.eval()
        with torch.no_grad():
            bar = tqdm(batches, desc="calibrate (Hessian batches)", unit="batch", total=total,
                       disable=not dist.dist_info().is_main)  # fmt: skip
            for window in bar:
                ids = window[:, :-1].to(device)
                cu = window_cu_seqlens(ids.cpu().numpy(), model.cfg.bos_id).to(device) if doc_isolated else None
                accumulate(EMBEDDING, model.hidden(ids, cu, looped, None))
                tokens += ids.numel()
    finally:
        for hook in hooks:
            hook.remove()
    return hessians, tokens


def reduce_hessians(hessians: dict[str, Tensor], tokens: int, device: torch.device) -> tuple[dict[str, Tensor], int]:
    """Sum Hessians and token counts over ranks (no-op on one process)."""
    if not dist.active():
        return hessians, tokens
    count = torch.tensor([float(tokens)], device=device)
    dist.all_reduce_sum([*hessians.values(), count])
    return hessians, int(count.item())
