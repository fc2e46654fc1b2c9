"""Which format every tensor gets: a policy keyed on the parameters' declared roles and matrix kinds.

=================  ===========================================================  ==========================
role / kind        format                                                       record
=================  ===========================================================  ==========================
embedding          GPTQ (or RTN) with SDClip row scales, ``quantize.embedding``   int7, k = 14
attn q/k/v/o       GPTQ (or RTN), ``quantize.q`` ... ``quantize.o``              int6, k = 13
mlp up/down        GPTQ (or RTN), ``quantize.up`` / ``quantize.down``            int6, k = 11.5
attn_gate          int8 per row (absmax) when ``quantize.gate_int8``, else fp16  int8 per row
control            fp16 passthrough                                             fp16
=================  ===========================================================  ==========================

Mixed precision (#2143: int5 q/o/down, int6 k/v/up) is a matter of the per-kind ``bits``. No decision looks at a
parameter's name. ``quantize.awq`` (AWQ-lite, #1908) then promotes a few column groups of the GPTQ matrices
to a finer grid (:mod:`pgolf.quant.awq`); ``quantize.inverse`` picks how GPTQ computes its H^-1 factor (#2054).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field

from pgolf.config import ConfigError, Count, CountOrZero, NonNegative, Positive, Section
from pgolf.model.gpt import GPT
from pgolf.model.layers import Linear
from pgolf.quant.bits import BitWidth
from pgolf.quant.gptq import InverseMethod

MatrixKind = Literal["embedding", "q", "k", "v", "o", "up", "down"]


class TensorSpec(Section):
    bits: BitWidth
    """Integer range +-(2^(bits-1) - 1), stored in int8."""
    clip_sigmas: Positive
    """SDClip: row scale = clip_sigmas * std(row) / (2^(bits-1) - 1) (method gptq only)."""
    rtn_clip_percentile: Annotated[float, Field(gt=0.0, le=100.0)]
    """Method rtn: row scale = max(P_p(|row|) / c, 1/c), P_p the p-th percentile of the row's |w| (linear
    interpolation); 100 = the row max. #374: 99.99984 for its int8 embeddings, 100 for its int6 matrices."""


class LqerConfig(Section):
    enabled: bool
    rank: Count
    top_k: Count
    """Tensors corrected: the k largest by ||W - W_hat||_F."""
    mode: Literal["asym", "sym"]
    """asym: A int2 with one scale, B int4 in groups (the record); sym: int-factor_bits with per-row scales."""
    group: Count
    factor_bits: BitWidth


class AwqConfig(Section):
    """AWQ-lite (#1908): the most activation-salient column groups of the GPTQ matrices are rounded
    on a finer grid (same SDClip clip, 2^(bits-1)-1 levels) and stored with a second per-row scale."""

    enabled: bool
    bits: BitWidth
    """Grid of the protected groups (frontier: 8, int8 in [-127, 127]); only matrices with fewer bits are candidates."""
    group_size: Count
    """Consecutive input columns per group (frontier: 64); a trailing partial group is never a candidate."""
    top_k: Count
    """Groups kept: in the whole model (scope global) or in each candidate matrix (per_matrix). Frontier: 1, global."""
    scope: Literal["global", "per_matrix"]
    min_elements: CountOrZero
    """Candidates have more than this many elements (frontier: 65,536, a constant there)."""


class QuantizeConfig(Section):
    method: Literal["gptq", "rtn"]
    """gptq, or round-to-nearest with per-row percentile-clipped scales (#374; see TensorSpec)."""
    hadamard: bool
    """Rotate every non-embedding matrix's input space by a Walsh-Hadamard matrix before quantizing (#2143)."""
    block_size: Count
    damping: NonNegative
    """GPTQ damping as a fraction of the mean Hessian diagonal."""
    act_order: bool
    inverse: InverseMethod
    """GPTQ's upper factor of H^-1: cholesky (the record: chol, inverse, chol) or reverse_cholesky (one
    factorization of H flipped, #2054); the same factor up to rounding."""
    gate_int8: bool
    embedding: TensorSpec
    q: TensorSpec
    k: TensorSpec
    v: TensorSpec
    o: TensorSpec
    up: TensorSpec
    down: TensorSpec
    lqer: LqerConfig
    awq: AwqConfig

    def model_post_init(self, _context: object) -> None:
        if self.awq.enabled and self.method != "gptq":
            raise ConfigError(f"quantize.awq.enabled needs quantize.method: gptq (AWQ-lite changes GPTQ's grid; "
                              f"got method {self.method!r})")  # fmt: skip


@dataclass(frozen=True)
class Decision:
    kind: MatrixKind | Literal["gate", "passthrough"]
    spec: TensorSpec | None


def decide(model: GPT, cfg: QuantizeConfig) -> dict[str, Decision]:
    """The decision for every parameter of ``model``."""
    kinds = {f"{name}.weight": m.kind for name, m in model.named_modules() if isinstance(m, Linear)}
    decisions = {}
    for name, role in model.param_roles().items():
        if role == "embedding":
            decisions[name] = Decision("embedding", cfg.embedding)
        elif role in ("attn", "mlp"):
            decisions[name] = Decision(kinds[name], getattr(cfg, kinds[name]))
        elif role == "attn_gate" and cfg.gate_int8:
            decisions[name] = Decision("gate", None)
        else:
            decisions[name] = Decision("passthrough", None)
    return decisions
