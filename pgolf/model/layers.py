"""Blocks of the record's transformer: attention (QK-norm, partial RoPE, q gain, GQA, XSA, sparse output gate),
the squared-activation MLP, the SmearGates (BOS-masked and #374's static one), #374's BigramHash and shared value
embedding, #374's OrthoInit rule, and the pre-norm block with resid_mix.

Shapes: B batch rows, T positions, H query heads, G KV heads, Dh head dim, D model dim. Attention is confined to
documents: ``cu_seqlens`` (int32, offsets into the flattened B*T stream, padded by repeating the total) gives the
segment starts; the backend (FA3, varlen, flex or the exact gather path, :mod:`pgolf.model.attention`) is chosen
once per layer at construction.

Adapters (TTT LoRA) enter through ``adapters.delta(site, slot, x)``, a tensor to add or ``None``: ``q``/``k``/``v``
are added to the projections before the q/k norms, ``o`` (input: the block's normed input) to the attention
output before ``attn_scale``, ``mlp`` (input: the MLP's normed input) to the MLP output before ``mlp_scale``.

References: XSA (exclusive self-attention), PR #1855 and its ancestors for the gate, SmearGate and resid_mix.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.attention import DocAttention
from pgolf.model.config import FusedMlp, ModelConfig

Role = Literal["embedding", "attn", "mlp", "attn_gate", "control"]
Kind = Literal["q", "k", "v", "o", "up", "down"]
Site = Literal["q", "k", "v", "o", "mlp", "head"]


class Adapters(Protocol):
    def delta(self, site: Site, slot: int, x: Tensor) -> Tensor | None: ...


def rms_norm(x: Tensor) -> Tensor:
    """RMSNorm over the last dim without a learned weight (computed in fp32, returned in x's dtype)."""
    return F.rms_norm(x.float(), (x.size(-1),)).to(x.dtype)


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a matmul on ``x`` runs in: autocast's dtype for x's device when autocast is on, else x's own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def fused_up_activation(x: Tensor, w: Tensor, slope: float) -> Tensor:
    """The fused Triton up-projection + activation (:mod:`pgolf.kernels.mlp`), imported here: only ``model.fused_mlp:
    triton`` runs it, and the submission program carries the kernel only then (``pgolf.compress.bundle.SWITCHES``)."""
    from pgolf.kernels.mlp import fused_up_activation as kernel

    return kernel(x, w, slope)


def use_fused_mlp(is_cuda: bool, training: bool, mode: FusedMlp) -> bool:
    """Whether the MLP takes the fused Triton up-projection: CUDA tensors in training under ``model.fused_mlp:
    triton``; ``compiled`` never does (the eager math, left to torch.compile)."""
    return mode == "triton" and is_cuda and training


def _adapt(y: Tensor, adapters: Adapters | None, site: Site, slot: int, x: Tensor) -> Tensor:
    if adapters is None:
        return y
    delta = adapters.delta(site, slot, x)
    return y if delta is None else y + delta.to(y.dtype)


class Linear(nn.Module):
    """A bias-free projection ``y = x W^T`` whose weight declares its optimizer role and its matrix kind (what the
    quantization policy and the Hessian collection key on).

    ``fake_quant`` is empty at construction; the train stage may install a fake quantizer (late QAT,
    :mod:`pgolf.train.qat`) before compiling, which the forward then applies to the weight.
    """

    def __init__(self, in_dim: int, out_dim: int, role: Role, kind: Kind, zero_init: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(out_dim, in_dim))
        if not zero_init:
            nn.init.orthogonal_(self.weight)
        self.ROLES: dict[str, Role] = {"weight": role}
        self.kind, self.zero_init = kind, zero_init
        self.fake_quant: nn.Module | None = None

    def effective_weight(self) -> Tensor:
        """The weight the forward multiplies by (fake-quantized under late QAT)."""
        return self.weight if self.fake_quant is None else self.fake_quant(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.effective_weight().to(x.dtype))


def ortho_init_(linear: Linear, num_layers: int) -> None:
    """#374's OrthoInit of one projection: orthogonal (gain 1) when both dims are >= 64, residual output
    projections (kind o/down) then scaled by 1/sqrt(2 num_layers); smaller matrices get PyTorch's default
    nn.Linear init (kaiming-uniform, a = sqrt(5)). Zero-initialised projections stay zero.

    #374 keyed "zero-init" on a flag its bigram and value-embedding projections lacked (their constructors zeroed
    them), so its rule overwrote both with a 1/sqrt(22)-scaled orthogonal init, while the block output projections,
    flagged, stayed zero. Here zero-init is a constructor argument that is always respected: o/down start at zero
    (so the 1/sqrt(2L) factor acts on no tensor of this model), the value-embedding projection starts at zero, and
    the bigram projection is declared non-zero (a zero table behind a zero projection would never get a gradient).
    """
    if linear.zero_init:
        return
    with torch.no_grad():
        if min(linear.weight.shape) >= 64:
            nn.init.orthogonal_(linear.weight, gain=1.0)
            if linear.kind in ("o", "down"):
                linear.weight.mul_(1.0 / math.sqrt(2 * num_layers))
        else:
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5))


class Rotary(nn.Module):
    """Partial rotary embedding on the first ``rope_dims`` of each head (half-split pairing j, j + rope_dims/2)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dims, self.base = cfg.rope_dims, cfg.rope_base
        self.ntk, self.train_len = cfg.rope_ntk_scale, cfg.rope_train_seq_len

    def angles(self, length: int, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """cos, sin of shape (1, T, 1, dims/2), computed in ``dtype`` (fp32 at least)."""
        base = self.base
        if self.ntk and length > self.train_len:
            base = base * (length / self.train_len) ** (self.dims / (self.dims - 2))
        inv_freq = 1.0 / base ** (torch.arange(0, self.dims, 2, device=device, dtype=dtype) / self.dims)
        theta = torch.outer(torch.arange(length, device=device, dtype=dtype), inv_freq)  # (T, dims/2)
        return theta.cos()[None, :, None, :], theta.sin()[None, :, None, :]

    def forward(self, x: Tensor) -> Tensor:  # x (B, T, heads, Dh)
        if not self.dims:
            return x
        cos, sin = self.angles(x.size(1), x.device, torch.promote_types(x.dtype, torch.float32))
        half = self.dims // 2
        x1, x2, rest = x[..., :half], x[..., half : self.dims], x[..., self.dims :]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        return torch.cat([x1 * cos + x2 * sin, -x1 * sin + x2 * cos, rest], dim=-1)


class Attention(nn.Module):
    ROLES: dict[str, Role] = {"q_gain": "control", "gate_w": "attn_gate", "ve_alpha": "control"}

    def __init__(self, cfg: ModelConfig, layer: int) -> None:
        super().__init__()
        D, H = cfg.model_dim, cfg.num_heads
        self.H, self.G, self.Dh = H, cfg.num_kv_heads, cfg.head_dim
        self.q = Linear(D, D, "attn", "q")
        self.k = Linear(D, cfg.kv_dim, "attn", "k")
        self.v = Linear(D, cfg.kv_dim, "attn", "v")
        self.o = Linear(D, D, "attn", "o", zero_init=True)  # every block starts as the identity
        self.q_gain = nn.Parameter(torch.full((H,), cfg.qk_gain_init))
        self.rotary = Rotary(cfg)
        self.xsa = layer >= cfg.num_layers - cfg.xsa_last_n
        self.gate_w = nn.Parameter(torch.zeros(H, cfg.gate_window)) if cfg.attn_gate else None
        self.gate_scale, self.gate_window = cfg.attn_gate_scale, cfg.gate_window
        if self.gate_w is not None and cfg.attn_gate_init_std > 0:
            nn.init.normal_(self.gate_w, std=cfg.attn_gate_init_std)
        self.ve_alpha = nn.Parameter(torch.ones(1)) if layer in cfg.value_embed.layers else None
        self.attend = DocAttention()  # (q, k, v, cu_seqlens) -> y, backend per device chosen here

    def forward(
        self, n: Tensor, cu_seqlens: Tensor | None, adapters: Adapters | None, slot: int, ve: Tensor | None = None
    ) -> Tensor:
        """``ve`` (B, T, kv_dim): the shared value embedding s_ve P E[ids], added as alpha_l ve on chosen layers."""
        B, T, _ = n.shape
        q = _adapt(self.q(n), adapters, "q", slot, n).view(B, T, self.H, self.Dh)
        k = _adapt(self.k(n), adapters, "k", slot, n).view(B, T, self.G, self.Dh)
        v = _adapt(self.v(n), adapters, "v", slot, n)
        if self.ve_alpha is not None and ve is not None:
            v = v + self.ve_alpha.to(v.dtype) * ve.to(v.dtype)  # before the split into heads
        v = v.view(B, T, self.G, self.Dh)
        q, k = self.rotary(rms_norm(q)), self.rotary(rms_norm(k))
        q = q * self.q_gain.to(q.dtype)[:, None]
        y = self.attend(q, k, v, cu_seqlens)  # (B, T, H, Dh)
        if self.xsa:  # remove each head's component along its own position's (normalized) value
            y = y.view(B, T, self.G, self.H // self.G, self.Dh)
            v_hat = F.normalize(v, dim=-1)[:, :, :, None]
            y = (y - (y * v_hat).sum(-1, keepdim=True) * v_hat).view(B, T, self.H, self.Dh)
        if self.gate_w is not None:
            gate = torch.sigmoid(self.gate_scale * F.linear(n[..., : self.gate_window], self.gate_w.to(n.dtype)))
            y = y * gate[..., None]
        return _adapt(self.o(y.reshape(B, T, -1)), adapters, "o", slot, n)


class MLP(nn.Module):
    ROLES: dict[str, Role] = {}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.up = Linear(cfg.model_dim, cfg.mlp_dim, "mlp", "up")
        self.down = Linear(cfg.mlp_dim, cfg.model_dim, "mlp", "down", zero_init=True)
        self.slope = cfg.mlp_leaky_slope if cfg.mlp_activation == "leaky_relu2" else 0.0
        self.fused_mlp = cfg.fused_mlp
        if cfg.fused_mlp == "triton":
            import pgolf.kernels.mlp  # noqa: F401  registers the kernel's custom op before anything compiles

    def forward(self, n: Tensor) -> Tensor:
        if use_fused_mlp(n.is_cuda, self.training, self.fused_mlp):  # the fused Triton up-projection + activation
            dtype = compute_dtype(n)  # autocast does not reach a custom op: hand it bf16, not fp32 (no tensor cores)
            return self.down(fused_up_activation(n.to(dtype), self.up.effective_weight().to(dtype), self.slope))
        # Everywhere else through self.up, whose forward hooks collect the calibration Hessians.
        return self.down(F.leaky_relu(self.up(n), self.slope).square())


class SmearGate(nn.Module):
    """e'_t = e_t + lambda * sigmoid(w . e_t[:window]) * e_(t-1), except where token t is BOS (no leak across docs)."""

    ROLES: dict[str, Role] = {"weight": "control", "lam": "control"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1, cfg.gate_window))
        self.lam = nn.Parameter(torch.zeros(1))
        self.bos_id, self.window = cfg.bos_id, cfg.gate_window

    def forward(self, e: Tensor, ids: Tensor) -> Tensor:
        gate = self.lam.to(e.dtype) * torch.sigmoid(F.linear(e[:, 1:, : self.window], self.weight.to(e.dtype)))
        keep = (ids[:, 1:] != self.bos_id).unsqueeze(-1).to(e.dtype)
        return torch.cat([e[:, :1], e[:, 1:] + gate * keep * e[:, :-1]], dim=1)


class StaticSmearGate(nn.Module):
    """#374's SmearGate, after the embedding norm: x_t <- (1 - sigmoid(g)) x_t + sigmoid(g) x_(t-1) per channel,
    with x_(-1) = 0 and g zero-initialised (an even mix). It is neither input-dependent nor BOS-masked, so in a packed
    stream the last position of one document leaks into the first position of the next."""

    ROLES: dict[str, Role] = {"gate": "control"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate = nn.Parameter(torch.zeros(cfg.model_dim))

    def forward(self, x: Tensor) -> Tensor:
        g = torch.sigmoid(self.gate).to(x.dtype)
        prev = F.pad(x[:, :-1], (0, 0, 1, 0))  # (B, T, D), zeros at t = 0
        return (1 - g) * x + g * prev


def bigram_buckets(ids: Tensor, buckets: int, bos_id: int) -> Tensor:
    """(B, T) bucket of each position: ((36313 t_i) XOR (27191 t_(i-1))) mod (buckets - 1), and the reserved
    bucket ``buckets - 1`` at position 0 and wherever t_i is BOS (a document's first position, whose left neighbour
    belongs to the previous document), so no document sees another's tokens."""
    ids = ids.long()
    reserved = buckets - 1
    pairs = torch.bitwise_xor(36313 * ids[:, 1:], 27191 * ids[:, :-1]) % reserved
    hashed = torch.cat([torch.full_like(ids[:, :1], reserved), pairs], dim=1)
    return torch.where(ids == bos_id, torch.full_like(hashed, reserved), hashed)


class BigramHash(nn.Module):
    """#374's hashed bigram embedding, added to the token embedding: scale * P table[bucket(t_(i-1), t_i)].

    The table is zero-initialised (the feature starts at 0); the projection P (dim -> model_dim, a matrix) starts
    orthogonal, since a zero P behind a zero table would never receive a gradient."""

    ROLES: dict[str, Role] = {"table": "embedding", "scale": "control"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        b = cfg.bigram_hash
        self.buckets, self.bos_id = b.buckets, cfg.bos_id
        self.table = nn.Parameter(torch.zeros(b.buckets, b.dim))
        self.proj = Linear(b.dim, cfg.model_dim, "mlp", "up")
        self.scale = nn.Parameter(torch.full((1,), b.scale_init))

    def forward(self, ids: Tensor) -> Tensor:  # (B, T) -> (B, T, D)
        e = F.embedding(bigram_buckets(ids, self.buckets, self.bos_id), self.table)
        return self.scale.to(e.dtype) * self.proj(e)


class ValueEmbedding(nn.Module):
    """#374's shared value embedding s_ve P E[ids] (B, T, kv_dim), computed once per forward and added to the value
    projection of the chosen layers, each with its own alpha_l. E (vocab x dim) ~ N(0, 0.01); P (dim -> kv_dim, a
    value matrix) starts at zero, so the feature starts at 0 but P gets a gradient through the random E."""

    ROLES: dict[str, Role] = {"table": "embedding", "scale": "control"}

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ve = cfg.value_embed
        self.table = nn.Parameter(torch.empty(cfg.vocab_size, ve.dim))
        nn.init.normal_(self.table, std=0.01)
        self.proj = Linear(ve.dim, cfg.kv_dim, "attn", "v", zero_init=True)
        self.scale = nn.Parameter(torch.full((1,), ve.scale_init))

    def forward(self, ids: Tensor) -> Tensor:
        e = F.embedding(ids, self.table)
        return self.scale.to(e.dtype) * self.proj(e)


class Block(nn.Module):
    """Pre-norm block with resid_mix; ``gptj`` runs attention and MLP side by side on the same normed input.

    sequential:  u = m0*x + m1*x0;  v = u + a*Attn(N(u) s);  out = v + b*MLP(N(v) s)
    gptj:        u = m0*x + m1*x0;  out = u + a*Attn(N(u) s) + b*MLP(N(u) s)
    """

    ROLES: dict[str, Role] = {"attn_scale": "control", "mlp_scale": "control", "resid_mix": "control"}

    def __init__(self, cfg: ModelConfig, layer: int, gptj: bool) -> None:
        super().__init__()
        D = cfg.model_dim
        self.attn, self.mlp = Attention(cfg, layer), MLP(cfg)
        self.attn_scale = nn.Parameter(torch.ones(D))
        self.mlp_scale = nn.Parameter(torch.ones(D))
        self.resid_mix = nn.Parameter(torch.stack([torch.ones(D), torch.zeros(D)]))
        self.scale = 1.0 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.gptj = gptj

    def attend(
        self, u: Tensor, cu: Tensor | None, adapters: Adapters | None, slot: int, ve: Tensor | None = None
    ) -> Tensor:
        return self.attn_scale.to(u.dtype) * self.attn(rms_norm(u) * self.scale, cu, adapters, slot, ve)

    def feed(self, v: Tensor, adapters: Adapters | None, slot: int) -> Tensor:
        n = rms_norm(v) * self.scale
        return self.mlp_scale.to(v.dtype) * _adapt(self.mlp(n), adapters, "mlp", slot, n)

    def mix(self, x: Tensor, x0: Tensor) -> Tensor:
        m = self.resid_mix.to(x.dtype)
        return m[0] * x + m[1] * x0

    def forward(
        self, x: Tensor, x0: Tensor, cu: Tensor | None, adapters: Adapters | None, slot: int, ve: Tensor | None = None
    ) -> Tensor:
        u = self.mix(x, x0)
        if self.gptj:
            return u + self.attend(u, cu, adapters, slot, ve) + self.feed(u, adapters, slot)
        v = u + self.attend(u, cu, adapters, slot, ve)
        return v + self.feed(v, adapters, slot)
