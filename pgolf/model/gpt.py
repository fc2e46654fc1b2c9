"""The record's GPT (PR #1855), one readable model; every feature is a ``model.*`` knob.

Notable features:
- tied embedding (small normal init), logit soft-cap c*tanh(z/c) (or a cap the caller passes, e.g. TTT's
  asymmetric one), weightless RMSNorm everywhere
- SmearGate on the embeddings with the BOS mask; x0 = RMSNorm(embedding) feeds every block's resid_mix
- optional (#374): hashed bigram embedding added to the token embedding, static SmearGate after the embedding
  norm, a shared value embedding added to V on chosen layers, OrthoInit
- attention: QK RMSNorm, learned per-head q gain, partial RoPE, GQA, XSA on the last n layers, sparse sigmoid
  output gate; never crosses documents (``cu_seqlens``)
- MLP with (LeakyReLU(0.5))^2 or ReLU^2; zero-initialised output projections (each block starts as identity)
- U-Net skips (sigmoid-gated lerp or additive) over a layer schedule with depth recurrence
- decoder parallelism from a start layer: the two-lane block of the record, or GPT-J parallel residuals

Wiring of the two-lane decoder block (physical layer l, lanes start equal to x)::

    a = alpha * Attn(N(m0*lane0 + m1*x0) s)     m = beta * MLP(N(lane1) s)
    lane0' = r0*lane0 + P00*a + P10*m           lane1' = r1*lane1 + P01*a + P11*m      x_final = (lane0 + lane1)/2

One ``forward`` serves training, evaluation, calibration and TTT; recurrence is chosen per call (``looped``), never
by mutating the module.

References: modded-nanogpt (U-Net skips, ReLU^2, QK-norm, Muon), parameter-golf PRs #374, #1492, #1855.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.config import ConfigError
from pgolf.kernels.softcap_ce import softcapped_cross_entropy
from pgolf.model.config import ModelConfig
from pgolf.model.layers import (
    Adapters,
    BigramHash,
    Block,
    Linear,
    Role,
    SmearGate,
    StaticSmearGate,
    ValueEmbedding,
    ortho_init_,
    rms_norm,
)
from pgolf.model.schedule import LayerSchedule, layer_schedule

EMBEDDING = "tok_emb.weight"
"""The tied embedding's parameter name (its own role, precision and Hessian everywhere)."""


class GPT(nn.Module):
    ROLES: dict[str, Role] = {"skip_weights": "control", "skip_gates": "control",
                              "parallel_post_lambdas": "control", "parallel_resid_lambdas": "control"}  # fmt: skip

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        L, D = cfg.num_layers, cfg.model_dim
        self.schedules = {looped: layer_schedule(L, cfg.loop_start, cfg.loop_end, cfg.num_loops, looped)
                          for looped in (False, True)}  # fmt: skip
        self.two_lane = {i for i in range(L) if cfg.parallel_mode == "two_lane" and i >= cfg.parallel_start_layer}
        gptj = {i for i in range(L) if cfg.parallel_mode == "gptj" and i >= cfg.parallel_start_layer}
        self._check_lanes()
        self.tok_emb = nn.Embedding(cfg.vocab_size, D)
        nn.init.normal_(self.tok_emb.weight, std=cfg.tied_embed_init_std)
        self.bigram = BigramHash(cfg) if cfg.bigram_hash.buckets else None
        self.smear = SmearGate(cfg) if cfg.smear_gate and cfg.smear_gate_kind == "bos_masked" else None
        self.static_smear = StaticSmearGate(cfg) if cfg.smear_gate and cfg.smear_gate_kind == "static" else None
        self.value_embed = ValueEmbedding(cfg) if cfg.value_embed.layers else None
        self.blocks = nn.ModuleList(Block(cfg, i, gptj=i in gptj) for i in range(L))
        num_skips = max(s.num_skips for s in self.schedules.values())
        self.skip_weights = nn.Parameter(torch.ones(num_skips, D))
        self.skip_gates = nn.Parameter(torch.zeros(num_skips, D)) if cfg.skip_gates else None
        if self.two_lane:
            self.parallel_post_lambdas = nn.Parameter(torch.ones(L, 2, 2))
            self.parallel_resid_lambdas = nn.Parameter(torch.full((L, 2), 1.1))
        if cfg.ortho_init:
            for module in self.modules():
                if isinstance(module, Linear):
                    ortho_init_(module, L)

    def _check_lanes(self) -> None:
        for schedule in self.schedules.values():
            lanes = [layer in self.two_lane for layer in schedule.decoder]
            if any(lanes) and not all(lanes[lanes.index(True) :]):
                raise ConfigError("model.parallel_start_layer: two-lane layers must end the decoder schedule")

    def schedule(self, looped: bool) -> LayerSchedule:
        return self.schedules[looped]

    def param_roles(self) -> dict[str, Role]:
        """Every parameter's declared role (optimizer groups and quantization policy key on these)."""
        roles: dict[str, Role] = {EMBEDDING: "embedding"}
        for prefix, module in self.named_modules():
            for name, _ in module.named_parameters(recurse=False):
                full = f"{prefix}.{name}" if prefix else name
                if full not in roles:
                    roles[full] = module.ROLES[name]
        return roles

    def forward(
        self,
        ids: Tensor,
        targets: Tensor | None = None,
        *,
        cu_seqlens: Tensor | None = None,
        looped: bool = False,
        adapters: Adapters | None = None,
        reduction: Literal["mean", "none"] = "mean",
        logit_cap: nn.Module | None = None,
        positions: Tensor | None = None,
    ) -> Tensor:
        """Soft-capped logits (B, T, V) when ``targets`` is None, else the cross-entropy in nats: a scalar mean or,
        with ``reduction="none"``, per token (B, T). ``logit_cap``: an evaluation-time cap applied (in fp32 at least)
        instead of the fixed ``c*tanh(z/c)``, e.g. LoRA TTT's learnable asymmetric one; it is no part of the model.
        ``positions`` (B, K): the head, the cap and the loss only at these row offsets (``targets`` then (B, K)):
        evaluation scores a few positions of long rows (a TTT chunk's 48 of 2048), so no (B, T, V) tensor exists."""
        h = self.hidden(ids, cu_seqlens, looped, adapters)
        if positions is not None:
            h = h.gather(1, positions.unsqueeze(-1).expand(-1, -1, h.shape[-1]))
        logits = F.linear(h, self.tok_emb.weight.to(h.dtype))
        if adapters is not None and (delta := adapters.delta("head", 0, h)) is not None:
            logits = logits + delta.to(logits.dtype)
        fused = logit_cap is None and self.cfg.logit_softcap > 0 and targets is not None and logits.is_cuda
        if fused:  # Triton softcap + CE (its cap is the fixed, symmetric one)
            loss = softcapped_cross_entropy(logits.flatten(0, 1), targets.flatten(), self.cfg.logit_softcap)
            return loss.mean() if reduction == "mean" else loss.view(targets.shape)
        if logit_cap is not None:
            logits = logit_cap(logits.to(torch.promote_types(logits.dtype, torch.float32)))
        elif self.cfg.logit_softcap > 0:
            logits = self.cfg.logit_softcap * torch.tanh(logits / self.cfg.logit_softcap)
        if targets is None:
            return logits
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # CE in fp32 at least
        loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        return loss if reduction == "mean" else loss.view(targets.shape)

    def embed(self, ids: Tensor) -> Tensor:
        e = self.tok_emb(ids)
        if self.bigram is not None:
            e = e + self.bigram(ids).to(e.dtype)
        if self.smear is not None:
            e = self.smear(e, ids)
        x = rms_norm(e)
        return x if self.static_smear is None else self.static_smear(x)

    def hidden(self, ids: Tensor, cu: Tensor | None, looped: bool, adapters: Adapters | None) -> Tensor:
        """Final-normed hidden states (B, T, D)."""
        x0 = x = self.embed(ids)
        ve = None if self.value_embed is None else self.value_embed(ids).to(x.dtype)
        schedule = self.schedules[looped]
        skips = []
        for slot, layer in enumerate(schedule.encoder):
            x = self.blocks[layer](x, x0, cu, adapters, slot, ve)
            skips.append(x)
        lanes = None
        for k, layer in enumerate(schedule.decoder):
            slot = len(schedule.encoder) + k
            if layer in self.two_lane:
                lane0, lane1 = lanes if lanes is not None else (x, x)
                if skips:
                    lane0 = self.merge_skip(k, lane0, skips.pop())
                lanes = self.two_lane_block(layer, lane0, lane1, x0, cu, adapters, slot, ve)
            else:
                if skips:
                    x = self.merge_skip(k, x, skips.pop())
                x = self.blocks[layer](x, x0, cu, adapters, slot, ve)
        if lanes is not None:
            x = 0.5 * (lanes[0] + lanes[1])
        return rms_norm(x)

    def merge_skip(self, k: int, x: Tensor, skip: Tensor) -> Tensor:
        """U-Net merge of encoder output ``skip`` into the decoder stream at decoder position ``k``."""
        weighted = self.skip_weights[k].to(x.dtype) * skip
        if self.skip_gates is None:
            return x + weighted
        return torch.lerp(weighted, x, torch.sigmoid(self.skip_gates[k]).to(x.dtype))

    def two_lane_block(
        self, layer: int, lane0: Tensor, lane1: Tensor, x0: Tensor, cu: Tensor | None, adapters, slot: int,
        ve: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:  # fmt: skip
        block = self.blocks[layer]
        a = block.attend(block.mix(lane0, x0), cu, adapters, slot, ve)
        m = block.feed(lane1, adapters, slot)
        post = self.parallel_post_lambdas[layer].to(a.dtype)
        resid = self.parallel_resid_lambdas[layer].to(a.dtype)
        return resid[0] * lane0 + post[0, 0] * a + post[1, 0] * m, resid[1] * lane1 + post[0, 1] * a + post[1, 1] * m
