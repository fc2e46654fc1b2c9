"""The ``model`` section of params.yaml (:class:`ModelParams`): every architectural knob of the record, each with
its record value available (see ``presets/``). The vocabulary and BOS id are not knobs: the train stage resolves
them from the tokenizer into a :class:`ModelConfig`, which checkpoints carry in their meta.json."""

from __future__ import annotations

from typing import Literal

from pgolf.config import ConfigError, Count, CountOrZero, Fraction, NonNegative, Positive, Section

FusedMlp = Literal["triton", "compiled"]


class BigramHashParams(Section):
    """#374's hashed previous-token embedding (2048 buckets, dim 128, scale 0.05); buckets 0 = off."""

    buckets: CountOrZero
    dim: Count
    scale_init: NonNegative


class ValueEmbedParams(Section):
    """#374's shared value embedding (dim 128 on layers 9 and 10, scale 0.1); empty layers = off."""

    dim: Count
    layers: list[CountOrZero]
    scale_init: NonNegative


class ModelParams(Section):
    num_layers: Count
    model_dim: Count
    num_heads: Count
    num_kv_heads: Count
    """Grouped-query attention: each K/V head serves num_heads / num_kv_heads query heads."""
    mlp_mult: Positive
    """MLP hidden width = int(mlp_mult * model_dim)."""
    mlp_activation: Literal["leaky_relu2", "relu2"]
    """(LeakyReLU(slope))^2 as in the record, or ReLU^2."""
    mlp_leaky_slope: Fraction
    """Negative slope of leaky_relu2: phi(u) = u^2 for u > 0, (slope u)^2 otherwise; the record 0.5, #1948/#2140 0.3
    (#1948, #2140). It reaches the eager path and the fused Triton kernel, forward and backward."""
    fused_mlp: FusedMlp
    """How the MLP's up-projection + activation runs on CUDA in training: ``triton``, the fused kernel of
    :mod:`pgolf.kernels.mlp`; ``compiled``, the eager math, which the train stage's torch.compile turns into cuBLAS
    GEMMs and an inductor-fused activation. On CPU, in evaluation and in TTT both are the eager math;
    ``bench/gpu_check`` times the two."""
    tied_embed_init_std: NonNegative
    logit_softcap: NonNegative
    """logits = c * tanh(z / c); 0 disables."""
    rope_base: Positive
    rope_dims: CountOrZero
    """Rotated dimensions per head (partial RoPE); the rest carry no position."""
    rope_ntk_scale: bool
    """NTK-style base rescale for sequences longer than rope_train_seq_len (the record: off)."""
    rope_train_seq_len: Count
    ln_scale: bool
    """Scale each block's normed inputs by 1/sqrt(layer + 1)."""
    qk_gain_init: Positive
    """Initial per-head gain on the RMS-normed queries."""
    xsa_last_n: CountOrZero
    """Exclusive self-attention on the last n physical layers (0 = none)."""
    attn_gate: bool
    """Sparse attention-output gate: sigmoid(scale * G n[:gate_window]) per head."""
    attn_gate_scale: NonNegative
    attn_gate_init_std: NonNegative
    gate_window: Count
    """Leading residual dims read by the attention gate and the SmearGate."""
    smear_gate: bool
    """Mix the previous position into each embedding (kind chosen by smear_gate_kind)."""
    smear_gate_kind: Literal["bos_masked", "static"]
    """bos_masked (the record): e_t + lambda * sigmoid(w e_t[:gate_window]) * e_(t-1), masked at BOS, before the
    embedding norm; static (#374): (1 - sigmoid(g)) x_t + sigmoid(g) x_(t-1) per channel after the norm, which leaks
    across documents in a packed stream."""
    bigram_hash: BigramHashParams
    value_embed: ValueEmbedParams
    ortho_init: bool
    """#374's OrthoInit rule (see :func:`pgolf.model.layers.ortho_init_`); false keeps orthogonal init everywhere."""
    skip_gates: bool
    """U-Net skips merged by a sigmoid lerp (true) or added with a learned weight (false)."""
    parallel_mode: Literal["none", "two_lane", "gptj"]
    """Decoder layers >= parallel_start_layer: two-lane parallel block (record) or GPT-J parallel residual."""
    parallel_start_layer: CountOrZero
    num_loops: CountOrZero
    """Extra passes of the loop segment [loop_start, loop_end] once recurrence is on (0 = no recurrence)."""
    loop_start: CountOrZero
    loop_end: CountOrZero

    def model_post_init(self, _context: object) -> None:
        problems = []
        if self.model_dim % self.num_heads:
            problems.append("model.model_dim must be a multiple of model.num_heads")
        elif self.num_heads % self.num_kv_heads:
            problems.append("model.num_heads must be a multiple of model.num_kv_heads")
        elif self.rope_dims % 2 or self.rope_dims > self.head_dim:
            problems.append(f"model.rope_dims must be even and at most head_dim={self.head_dim}")
        if self.num_loops and not 0 <= self.loop_start <= self.loop_end < self.num_layers:
            problems.append("model.loop_start..loop_end must lie inside 0..num_layers-1")
        if self.bigram_hash.buckets == 1:
            problems.append("model.bigram_hash.buckets must be 0 (off) or at least 2 (one is reserved)")
        if any(not 0 <= layer < self.num_layers for layer in self.value_embed.layers):
            problems.append("model.value_embed.layers must lie inside 0..num_layers-1")
        if self.gate_window > self.model_dim:
            problems.append("model.gate_window must not exceed model.model_dim")
        if problems:
            raise ConfigError("; ".join(problems))

    def resolve(self, vocab_size: int, bos_id: int) -> ModelConfig:
        """The full model configuration for a tokenizer."""
        return ModelConfig(**self.model_dump(), vocab_size=vocab_size, bos_id=bos_id)

    @property
    def head_dim(self) -> int:
        return self.model_dim // self.num_heads

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    @property
    def mlp_dim(self) -> int:
        return int(self.mlp_mult * self.model_dim)


class ModelConfig(ModelParams):
    """A model configuration resolved against a tokenizer."""

    vocab_size: Count
    bos_id: CountOrZero
    """Document separator: SmearGate does not mix across it."""
