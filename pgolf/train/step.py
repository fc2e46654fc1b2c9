"""One optimizer step and what it needs: optimizer groups by parameter role, the schedule applied to them, the
step itself (gradient accumulation, rank averaging, clipping), and the thrown-away compile warm-up.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from pgolf import dist
from pgolf.compiler import CompileLimitHit
from pgolf.dist import autocast
from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon
from pgolf.train.config import TrainConfig
from pgolf.train.loader import PackingLoader


class TrainingAborted(PgolfError, RuntimeError):
    """``train.abort_above``: the run scored worse than the threshold at the step; no weights are written."""


class TrainingDiverged(PgolfError, RuntimeError):
    """A non-finite loss: training stops instead of writing garbage weights (the message names the step and the
    knobs to lower, so the stage prints it as one line)."""


@dataclass
class Optimizers:
    """Muon for the attention/MLP matrices, AdamW for the embedding and the control tensors."""

    muon: Muon
    embed: torch.optim.AdamW
    scalar: torch.optim.AdamW

    def all(self) -> tuple[torch.optim.Optimizer, ...]:
        return self.muon, self.embed, self.scalar

    def set_schedule(self, lr_mul: float, momentum: float) -> None:
        for opt in self.all():
            for group in opt.param_groups:
                group["lr"] = group["base_lr"] * lr_mul
        for group in self.muon.param_groups:
            group["momentum"] = momentum

    def step(self) -> None:
        for opt in self.all():
            opt.step()
        for opt in self.all():
            opt.zero_grad(set_to_none=True)


def build_optimizers(model: GPT, cfg: TrainConfig, compile_backend: str | Callable | None = None) -> Optimizers:
    """Muon, embedding AdamW and scalar AdamW with ``base_lr`` recorded; ``compile_backend`` compiles Muon's
    Newton–Schulz (None: eager)."""
    roles = model.param_roles()
    params = dict(model.named_parameters())
    by_role = {r: [params[n] for n, role in roles.items() if role == r] for r in set(roles.values())}
    m, a = cfg.muon, cfg.adam
    ns_dtype = torch.bfloat16 if next(model.parameters()).is_cuda else torch.float32
    muon = Muon(by_role.get("attn", []) + by_role.get("mlp", []), lr=m.lr, momentum=m.momentum_warmup_start,
                weight_decay=m.weight_decay, nesterov=m.nesterov, row_normalize=m.row_normalize,
                ns_steps=m.ns_steps, ns_coeffs=m.ns_coeffs, ns_dtype=ns_dtype,
                compile_backend=compile_backend)  # fmt: skip
    betas = (a.beta1, a.beta2)
    embed = torch.optim.AdamW(by_role["embedding"], lr=a.embed_lr, betas=betas, eps=a.eps, weight_decay=a.embed_wd)
    scalars = by_role.get("control", []) + by_role.get("attn_gate", [])
    scalar = torch.optim.AdamW(scalars, lr=a.scalar_lr, betas=betas, eps=a.eps, weight_decay=a.scalar_wd)
    opts = Optimizers(muon, embed, scalar)
    for opt in opts.all():
        for group in opt.param_groups:
            group["base_lr"] = group["lr"]
    return opts


@torch.no_grad()
def apply_dtype_policy(model: nn.Module, policy: Literal["fp32", "record"]) -> None:
    """``train.dtype_policy`` on a freshly built model (before the optimizers): ``record`` rounds every initial
    value through bf16 (the record builds in fp32, casts the model to bf16, then restores fp32 masters) and leaves
    the tied embedding a bf16 parameter; ``fp32`` changes nothing."""
    if policy == "fp32":
        return
    embedding = model.tok_emb.weight
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16) if p is embedding else p.data.to(torch.bfloat16).float()


@dataclass
class StepOutcome:
    """What a step leaves for the loop's one host synchronization: the summed loss of its micro-batches, still on
    the device, and the compile-limit error a micro-batch met (that step ran it eagerly instead)."""

    loss_sum: Tensor
    failure: CompileLimitHit | None = None


def _accumulate(
    forward: Callable[..., Tensor], model: nn.Module, loader: PackingLoader, grad_accum: int, looped: bool,
    device: torch.device,
) -> StepOutcome:  # fmt: skip
    """Forward and backward of ``grad_accum`` micro-batches. A micro-batch that hits the recompile limit runs the
    eager model instead (same math, so every rank still reaches the same collectives with the same gradients);
    the error is returned for the loop to raise on every rank after the step."""
    total, failure = torch.zeros((), device=device), None
    for _ in range(grad_accum):
        batch = loader.next_batch()
        with autocast(device):
            try:
                loss = forward(batch.inputs, batch.targets, cu_seqlens=batch.cu_seqlens, looped=looped)
            except CompileLimitHit as err:
                failure, forward = err, model
                loss = model(batch.inputs, batch.targets, cu_seqlens=batch.cu_seqlens, looped=looped)
        (loss / grad_accum).backward()
        total += loss.detach()
    return StepOutcome(total, failure)


def train_step(
    forward: Callable[..., Tensor],
    model: nn.Module,
    opts: Optimizers,
    loader: PackingLoader,
    *,
    grad_accum: int,
    looped: bool,
    clip: float,
    clip_scope: Literal["local", "global"] = "global",
    device: torch.device,
) -> StepOutcome:
    """Accumulate ``grad_accum`` micro-batches, clip and average gradients across ranks (clipping before the
    average for ``clip_scope="local"``, after it for ``"global"``), step. Nothing here waits for the device: the
    loss and a compile failure come back for the loop's one per-step synchronization (:mod:`pgolf.train.loop`),
    which stops every rank together on a failure or a non-finite loss."""
    outcome = _accumulate(forward, model, loader, grad_accum, looped, device)
    if clip > 0 and clip_scope == "local":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    dist.all_reduce_mean([p.grad for p in model.parameters() if p.grad is not None])
    if clip > 0 and clip_scope == "global":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opts.step()
    return outcome


def compile_warmup(run_steps: Callable[[bool], None], model: nn.Module, opts: Optimizers) -> None:
    """Run warm-up steps unlooped then looped (so both graphs compile), then restore weights and optimizer state
    exactly: the warm-up changes nothing but caches."""
    weights = copy.deepcopy(model.state_dict())
    states = [copy.deepcopy(opt.state_dict()) for opt in opts.all()]
    run_steps(False)
    run_steps(True)
    model.load_state_dict(weights)
    for opt, state in zip(opts.all(), states, strict=True):
        opt.load_state_dict(state)  # replaces the state wholesale: Muon momentum included (the record kept it)
    for p in model.parameters():
        p.grad = None
