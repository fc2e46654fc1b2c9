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


def _accumulate(
    forward: Callable[..., Tensor], loader: PackingLoader, grad_accum: int, looped: bool, device: torch.device
) -> tuple[Tensor, CompileLimitHit | None]:
    """Forward and backward of ``grad_accum`` micro-batches: (summed loss, the compile-limit error that stopped
    them, if any: the caller makes every rank stop with it)."""
    total = torch.zeros((), device=device)
    for _ in range(grad_accum):
        batch = loader.next_batch().to(device, non_blocking=True)
        try:
            with autocast(device):
                loss = forward(batch.inputs, batch.targets, cu_seqlens=batch.cu_seqlens, looped=looped)
        except CompileLimitHit as err:
            return total, err
        (loss / grad_accum).backward()
        total += loss.detach()
    return total, None


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
    compiled: bool = False,
) -> float:
    """Accumulate ``grad_accum`` micro-batches, clip and average gradients across ranks (clipping before the
    average for ``clip_scope="local"``, after it for ``"global"``), step. Returns the mean loss.

    ``compiled``: the forward is a :class:`~pgolf.compiler.CompiledModel`; every rank then agrees (one flag
    all-reduce) on whether some rank hit the recompile limit, and all of them raise it, instead of one rank dying
    while the others wait in the gradient all-reduce."""
    total, failure = _accumulate(forward, loader, grad_accum, looped, device)
    if compiled and dist.any_true(failure is not None, device):
        raise failure or CompileLimitHit("another rank hit the torch.compile recompile limit (see its error)")
    if failure is not None:
        raise failure
    if clip > 0 and clip_scope == "local":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    dist.all_reduce_mean([p.grad for p in model.parameters() if p.grad is not None])
    if clip > 0 and clip_scope == "global":
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opts.step()
    return total.item() / grad_accum


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
