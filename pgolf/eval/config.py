"""The ``eval`` section of params.yaml: every evaluation mode's config, apart from the modes' code.

The evaluate stage validates the whole section whichever modes are on, so the configs live here, and a mode's
module is imported only when the mode runs (:data:`pgolf.eval.modes.MODES`): the submission program carries the
code of the modes its params turn on and no other (``pgolf.compress.bundle.SWITCHES``).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pgolf.config import (
    ConfigError,
    Count,
    CountOrZero,
    Decay,
    Fraction,
    NonNegative,
    Positive,
    Section,
    Seed,
    raise_problems,
)
from pgolf.model.layers import Site


class SlidingConfig(Section):
    """#1492 sliding window, confined to each document: windows of ``seq_len`` advancing by ``stride``."""

    enabled: bool
    seq_len: Count  # #1492: 2048
    stride: Count  # #1492: 64 (every scored token but the first window's has >= seq_len - stride of context)
    batch_windows: Count  # #1492: 32

    def model_post_init(self, _context: object) -> None:
        if self.stride > self.seq_len:
            raise ConfigError(f"eval.sliding.stride ({self.stride}) must not exceed eval.sliding.seq_len")


class GlobalSgdConfig(Section):
    """Full-parameter SGD over a token stream, in chunks, with a cosine lr across chunks (``eval.lora_ttt.global_sgd``;
    #1802's multi-phase passes use the same schedule with their own values)."""

    lr: NonNegative  # record: GLOBAL_TTT_LR = 1e-3
    momentum: Decay  # record: 0.9
    epochs: CountOrZero  # record: GLOBAL_TTT_EPOCHS = 1
    chunk_tokens: Count  # record: GLOBAL_TTT_CHUNK_TOKENS = 32768
    seq_len: Count  # record: 2048 (training sequences; attention also stops at documents)
    grad_clip: NonNegative  # record: GLOBAL_TTT_GRAD_CLIP = 1.0 (0 = off)


class ChunkSgdConfig(Section):
    """#1492 score-first TTT: score a chunk (sliding windows), then SGD on all parameters over it."""

    enabled: bool
    chunk_tokens: Count  # #1492: 32768
    seq_len: Count  # #1492: 2048 (scoring windows and training sequences)
    stride: Count  # #1492: 64
    batch_windows: Count  # #1492: 32
    epochs: CountOrZero  # #1492: 3
    lr: NonNegative  # #1492: 0.005
    momentum: Decay  # #1492: 0.9
    cosine: bool  # #1492: true (lr * (1 + cos(pi c / (n - 1))) / 2 across chunks)
    grad_clip: NonNegative  # #1492: 1.0 (0 = off)

    def model_post_init(self, _context: object) -> None:
        if self.stride > self.seq_len:
            raise ConfigError("eval.chunk_sgd.stride must not exceed eval.chunk_sgd.seq_len")


class MultiPhaseConfig(Section):
    """#1802 multi-phase global TTT: score, train on everything, re-score. NOT compliant (re-scores trained
    tokens); kept as a measured counter-example."""

    enabled: bool
    seq_len: Count  # #1802: 2048
    stride: Count  # #1802: 64
    batch_windows: Count  # #1802: 32
    passes: Count  # #1802: 2 training passes (MP_TTT_PHASES = 3 scoring phases)
    chunk_tokens: Count  # #1802: 32768 (one SGD step per chunk, no last-chunk guard)
    lr: NonNegative  # #1802: MP_TTT_LR = 0.015
    momentum: Decay  # #1802: 0.9
    grad_clip: NonNegative  # #1802: 1.0

    def model_post_init(self, _context: object) -> None:
        if self.stride > self.seq_len:
            raise ConfigError("eval.multi_phase.stride must not exceed eval.multi_phase.seq_len")

    def sgd(self) -> GlobalSgdConfig:
        """One training pass over every chunk, as global SGD runs it."""
        return GlobalSgdConfig(lr=self.lr, momentum=self.momentum, epochs=1, chunk_tokens=self.chunk_tokens,
                               seq_len=self.seq_len, grad_clip=self.grad_clip)  # fmt: skip


class NgramTiltConfig(Section):
    """params.yaml ``eval.lora_ttt.ngram_tilt``: the tilt of LoRA TTT's scores. Only the token expert exists; no
    key turns on the frontier code's target-gated channels (within-word, word-start, agreement), which break C1."""

    enabled: bool  # record: false ; #2135: true (NGRAM_TILT_ENABLED)
    order: Count  # #2135: TOKEN_ORDER = 16 (the context is the previous order - 1 tokens of the document)
    threshold: Fraction  # #2135: TOKEN_THRESHOLD = 0.8 (tilt where the hint's confidence >= this)
    boost: Annotated[float, Field(ge=0.0, le=50.0)]  # #2135: TOKEN_BOOST = 2.625 (beta)


class ShortChunk(Section):
    """One step of the short-document chunk schedule: batches whose longest document has at most ``max_len``
    tokens are scored and adapted in chunks of ``chunk_size`` targets."""

    max_len: Count  # a document's length: its BOS through the next document's BOS (num_targets + 1)
    chunk_size: Count


class LoraTttConfig(Section):
    """params.yaml ``eval.lora_ttt``: the record's phased score-first TTT, per-document batched LoRA plus global
    SGD on scored prefixes, with the frontier's knobs (module docstring)."""

    enabled: bool
    rank: Count  # record: TTT_LORA_RANK = 80
    alpha: Positive  # record: TTT_LORA_ALPHA = 144 (scale alpha / rank = 1.8)
    lr: NonNegative  # record: TTT_LORA_LR = 1e-4 (AdamW, constant)
    local_lr_mult: NonNegative  # record: 1.0 ; #1953/#2014: 0.75, #2060: 0.80 (per-document AdamW lr = lr * this)
    beta1: Decay  # record: 0.0
    beta2: Decay  # record: 0.99
    eps: Positive  # record: 1e-10
    weight_decay: NonNegative  # record: 0.5 (decoupled)
    chunk_size: Count  # record: TTT_CHUNK_SIZE = 48 (batches beyond every short_chunks entry)
    short_chunks: list[ShortChunk]  # record: [] ; #2014: 256 -> 8, 2000 -> 24 (max_len -> chunk_size)
    context: Count  # record: TTT_EVAL_SEQ_LEN = 2048 (own-document tokens a chunk's window reaches back)
    batch_docs: Count  # record: TTT_BATCH_SIZE = 64
    warm_start_a: bool  # record: TTT_WARM_START_A = 1 (keep A from the slot's previous document)
    sites: list[Site] = Field(min_length=1)  # record: [q, k, v, o, mlp, head]
    phases: list[Count]  # record: [833, 1666, 2500] (prefix document counts; PHASED_TTT_PREFIX_DOCS=2500, 3 phases)
    seed: Seed  # random A of fresh adapters (the record: unseeded)
    asym_logit: bool  # record: false ; #1923/#1945/#2014/#2135: true (learnable caps sp, sn, trained by global SGD)
    ngram_tilt: NgramTiltConfig
    global_sgd: GlobalSgdConfig

    def model_post_init(self, _context: object) -> None:
        problems = self._short_chunk_problems()
        if self.context < self.chunk_size:
            problems.append("eval.lora_ttt.context must be at least eval.lora_ttt.chunk_size")
        if self.phases != sorted(set(self.phases)):
            problems.append(f"eval.lora_ttt.phases must be increasing document counts (got {self.phases})")
        if len(set(self.sites)) != len(self.sites):
            problems.append(f"eval.lora_ttt.sites has duplicates: {self.sites}")
        raise_problems(problems)

    def _short_chunk_problems(self) -> list[str]:
        limits = [s.max_len for s in self.short_chunks]
        problems = []
        if any(a >= b for a, b in zip(limits, limits[1:], strict=False)):
            problems.append(f"eval.lora_ttt.short_chunks: max_len must be increasing (got {limits})")
        for i, step in enumerate(self.short_chunks):
            if step.chunk_size > self.context:
                problems.append(f"eval.lora_ttt.short_chunks[{i}].chunk_size must lie in 1..eval.lora_ttt.context "
                                f"({self.context}) (got {step.chunk_size})")  # fmt: skip
        return problems

    def batch_chunk_size(self, longest: int) -> int:
        """The chunk size of a batch whose longest document has ``longest`` tokens (BOS through the next BOS):
        the first ``short_chunks`` entry with ``max_len >= longest``, else ``chunk_size``."""
        return next((s.chunk_size for s in self.short_chunks if s.max_len >= longest), self.chunk_size)


class AuditConfig(Section):
    """The stage's own audits (the bytes audit always runs when the val text is available)."""

    score_first: bool  # perturbation audit of every TTT mode
    docs: int = Field(ge=1)  # documents of the audit runs (the first ones)


class EvalConfig(Section):
    """params.yaml ``eval``: the modes beyond the plain score (which is the ``score`` section's), all on the
    ``score`` section's documents, and the stage's audits."""

    progress: bool  # tqdm bars on rank 0
    compile: bool  # record: true. torch.compile the scoring/TTT forward, warmed up before the timer (CUDA only)
    sliding: SlidingConfig
    lora_ttt: LoraTttConfig
    chunk_sgd: ChunkSgdConfig
    multi_phase: MultiPhaseConfig
    audit: AuditConfig
