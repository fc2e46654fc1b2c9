"""Full-parameter SGD on a token stream, shared by the TTT modes (record global SGD, #1492 chunk TTT, #1802).

A stream of ``n + 1`` tokens has ``n`` targets; it is cut into chunks of ``chunk_tokens`` targets and each chunk
into training sequences of ``seq_len`` (the last may be shorter). The sequences of a chunk are split round-robin
over ranks; each rank runs its sequences as rows of a batch (each row its own context, padded at the end) whose
``cu_seqlens`` also start at every BOS, so attention never crosses a document (the record's
``GLOBAL_TTT_RESPECT_DOC_BOUNDARIES=1``) and the step does not depend on how sequences are grouped. The loss is
the sum of per-token nats divided by the chunk's target count on *all* ranks, and gradients are all-reduced by
sum: the step is the same for any world size (up to float summation order). Then ``clip_grad_norm_`` and ``SGD.step``.

``logit_cap`` (LoRA TTT's AsymLogit, :class:`pgolf.eval.lora_ttt.AsymSoftcap`): the loss goes through that cap
instead of the model's fixed one, and its parameters join the model's in the optimizer, the all-reduce and the
clip, so the cap learns with the weights; it is trainable only inside :func:`train_stream`.

Deliberate differences from the reference: we use every target of a chunk (it uses only ``floor(len/2048)`` full
sequences); parameters stay fp32 (the record's bf16 ``tok_emb`` rounds small updates away).

References: record ``train_val_ttt_global_sgd_distributed``, #1492 ``eval_val_sliding_ttt``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pgolf import dist as pdist
from pgolf.dist import autocast, to_device
from pgolf.eval.config import GlobalSgdConfig
from pgolf.score.documents import PAD_ID
from pgolf.score.scores import EvalContext, set_trainable
from pgolf.segments import window_cu_seqlens

Span = tuple[int, int]  # [lo, hi) target indices of a stream


def chunk_spans(num_targets: int, chunk_tokens: int) -> list[Span]:
    return [(lo, min(lo + chunk_tokens, num_targets)) for lo in range(0, num_targets, chunk_tokens)]


def cosine_lr(lr: float, chunk: int, num_chunks: int) -> float:
    """``lr * (1 + cos(pi c / (n - 1))) / 2``: from ``lr`` at the first chunk down to 0 at chunk ``n - 1``."""
    return lr * 0.5 * (1.0 + math.cos(math.pi * chunk / max(1, num_chunks - 1)))


def _piece_rows(stream: np.ndarray, pieces: list[Span], seq_len: int) -> tuple[np.ndarray, ...]:
    """Inputs, targets ``[P, seq_len]`` (int64, padded at the end) and the valid mask of some target spans."""
    offsets = np.arange(seq_len)
    lo, hi = np.array(pieces).T
    valid = offsets < (hi - lo)[:, None]
    index = np.where(valid, lo[:, None] + offsets, 0)
    inputs = np.where(valid, stream[index], PAD_ID).astype(np.int64)
    targets = np.where(valid, stream[index + 1], PAD_ID).astype(np.int64)
    return inputs, targets, valid


def sgd_step(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    stream: np.ndarray,
    span: Span,
    *,
    lr: float,
    seq_len: int,
    grad_clip: float,
    ctx: EvalContext,
    logit_cap: nn.Module | None = None,
) -> float:
    """One SGD step on the targets ``span`` of ``stream`` (all ranks of ``ctx`` together, with its layer schedule);
    returns this rank's loss share."""
    lo, hi = span
    pieces = [(a, min(a + seq_len, hi)) for a in range(lo, hi, seq_len)][ctx.rank :: ctx.world_size]
    params = [p for p in _trained(model, logit_cap) if p.requires_grad]
    extra = {} if logit_cap is None else {"logit_cap": logit_cap}
    opt.zero_grad(set_to_none=True)
    loss_value = 0.0
    if pieces:
        device = params[0].device
        inputs, targets, valid = _piece_rows(stream, pieces, seq_len)
        cu = to_device(window_cu_seqlens(inputs, model.cfg.bos_id), device)
        inputs, targets, valid = (to_device(a, device) for a in (inputs, targets, valid))
        with autocast(device):
            nats = model(inputs, targets, cu_seqlens=cu, looped=ctx.looped, reduction="none", **extra)
        loss = torch.where(valid, nats.float(), 0.0).sum() / (hi - lo)
        loss.backward()
        loss_value = float(loss.detach())
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    pdist.all_reduce_sum(grads)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    for group in opt.param_groups:
        group["lr"] = lr
    opt.step()
    return loss_value


def train_stream(
    model: nn.Module,
    stream: np.ndarray,
    cfg: GlobalSgdConfig,
    ctx: EvalContext,
    *,
    skip_last_chunk: bool,
    logit_cap: nn.Module | None = None,
) -> int:
    """``cfg.epochs`` passes of SGD (fresh optimizer, momentum, cosine lr across chunks) over ``stream``; one step
    per chunk and pass. ``skip_last_chunk``: the record never trains on the stream's last chunk. ``logit_cap``: the
    loss's cap, trained too (module docstring). Returns the steps."""
    spans = chunk_spans(len(stream) - 1, cfg.chunk_tokens)
    trained = spans[:-1] if skip_last_chunk else spans
    if not trained or cfg.epochs == 0:
        return 0
    modules = [model] if logit_cap is None else [model, logit_cap]
    for module in modules:
        set_trainable(module, True)
    model.train()
    opt = torch.optim.SGD(_trained(model, logit_cap), lr=cfg.lr, momentum=cfg.momentum)
    for _ in range(cfg.epochs):
        for c, span in enumerate(trained):
            sgd_step(model, opt, stream, span, lr=cosine_lr(cfg.lr, c, len(spans)), seq_len=cfg.seq_len,
                     grad_clip=cfg.grad_clip, ctx=ctx, logit_cap=logit_cap)  # fmt: skip
    for module in modules:
        set_trainable(module, False)
    model.eval()
    return cfg.epochs * len(trained)


def _trained(model: nn.Module, logit_cap: nn.Module | None) -> list[nn.Parameter]:
    """The parameters global SGD updates: the model's, then the cap's."""
    return list(model.parameters()) + ([] if logit_cap is None else list(logit_cap.parameters()))
