"""The ``eval`` section of params.yaml: which evaluation modes run and how (one sub-section per mode).

Every mode scores the same documents (the ``score`` section's: :mod:`pgolf.eval.score`), so their figures compare.
Record values (PR #1855, or the PR named) are given in each field's comment; params.yaml holds the values in use.

References: spec record-eval-data.md A5-A6 (plain eval, phased LoRA TTT); other-seeds.md §2.2 (#1492 sliding
window and chunk SGD TTT), §4.2 (#1802 multi-phase global TTT); frontier.md §3.2-3.5, §3.8-3.9 (the post-#1855
LoRA TTT knobs: AsymLogit, longer context, adapter masks, local lr multiplier, short-document chunks, one phase).
"""

from __future__ import annotations

from pydantic import Field

from pgolf.config import ConfigError, Section
from pgolf.eval.ngram import NgramTiltParams
from pgolf.model.layers import Site


def _positive(section: str, **values: float) -> list[str]:
    return [f"eval.{section}.{key} must be positive (got {value})" for key, value in values.items() if value <= 0]


def _non_negative(section: str, **values: float) -> list[str]:
    return [f"eval.{section}.{key} must be >= 0 (got {value})" for key, value in values.items() if value < 0]


def _raise(problems: list[str]) -> None:
    if problems:
        raise ConfigError("; ".join(problems))


class SlidingConfig(Section):
    """#1492 sliding window, confined to each document: windows of ``seq_len`` advancing by ``stride``."""

    enabled: bool
    seq_len: int  # #1492: 2048
    stride: int  # #1492: 64 (every scored token but the first window's has >= seq_len - stride of context)
    batch_windows: int  # #1492: 32

    def model_post_init(self, _context: object) -> None:
        problems = _positive("sliding", seq_len=self.seq_len, stride=self.stride, batch_windows=self.batch_windows)
        if self.stride > self.seq_len:
            problems.append(f"eval.sliding.stride ({self.stride}) must not exceed eval.sliding.seq_len")
        _raise(problems)


class GlobalSgdConfig(Section):
    """Full-parameter SGD over a token stream, in chunks, with a cosine lr across chunks."""

    lr: float  # record: GLOBAL_TTT_LR = 1e-3
    momentum: float  # record: 0.9
    epochs: int  # record: GLOBAL_TTT_EPOCHS = 1
    chunk_tokens: int  # record: GLOBAL_TTT_CHUNK_TOKENS = 32768
    seq_len: int  # record: 2048 (training sequences; attention also stops at documents)
    grad_clip: float  # record: GLOBAL_TTT_GRAD_CLIP = 1.0 (0 = off)

    def model_post_init(self, _context: object) -> None:
        problems = _positive("lora_ttt.global_sgd", chunk_tokens=self.chunk_tokens, seq_len=self.seq_len)
        problems += _non_negative("lora_ttt.global_sgd", lr=self.lr, momentum=self.momentum, epochs=self.epochs,
                                  grad_clip=self.grad_clip)  # fmt: skip
        _raise(problems)


class ShortChunk(Section):
    """One step of the short-document chunk schedule: batches whose longest document has at most ``max_len``
    tokens are scored and adapted in chunks of ``chunk_size`` targets."""

    max_len: int  # a document's length: its BOS through the next document's BOS (num_targets + 1)
    chunk_size: int


class NgramTiltConfig(Section):
    """frontier.md §3.11's causal token-only n-gram tilt of LoRA TTT's scores (:mod:`pgolf.eval.ngram`): hints from
    counts of the already-scored targets, in scoring order. Only the token expert exists; no key turns on the
    frontier code's target-gated channels (within-word, word-start, agreement), which break C1."""

    enabled: bool  # record: false ; #2135: true (NGRAM_TILT_ENABLED)
    order: int  # #2135: TOKEN_ORDER = 16 (the context is the previous order - 1 tokens of the document)
    threshold: float  # #2135: TOKEN_THRESHOLD = 0.8 (tilt where the hint's confidence >= this)
    boost: float  # #2135: TOKEN_BOOST = 2.625 (beta)

    def model_post_init(self, _context: object) -> None:
        self.params()  # ConfigError naming the key

    def params(self) -> NgramTiltParams:
        return NgramTiltParams(order=self.order, threshold=self.threshold, boost=self.boost)


class LoraTttConfig(Section):
    """The record's phased score-first TTT: per-document batched LoRA plus global SGD on scored prefixes."""

    enabled: bool
    rank: int  # record: TTT_LORA_RANK = 80
    alpha: float  # record: TTT_LORA_ALPHA = 144 (scale alpha / rank = 1.8)
    lr: float  # record: TTT_LORA_LR = 1e-4 (AdamW, constant)
    local_lr_mult: float  # record: 1.0 ; #1953/#2014: 0.75, #2060: 0.80 (per-document AdamW lr = lr * this)
    beta1: float  # record: 0.0
    beta2: float  # record: 0.99
    eps: float  # record: 1e-10
    weight_decay: float  # record: 0.5 (decoupled)
    chunk_size: int  # record: TTT_CHUNK_SIZE = 48 (batches beyond every short_chunks entry)
    short_chunks: list[ShortChunk]  # record: [] ; #2014: 256 -> 8, 2000 -> 24 (max_len -> chunk_size)
    context: int  # record: TTT_EVAL_SEQ_LEN = 2048 (own-document tokens a chunk's window reaches back)
    batch_docs: int  # record: TTT_BATCH_SIZE = 64
    warm_start_a: bool  # record: TTT_WARM_START_A = 1 (keep A from the slot's previous document)
    sites: list[Site] = Field(min_length=1)  # record: [q, k, v, o, mlp, head]
    phases: list[int]  # record: [833, 1666, 2500] (prefix document counts; PHASED_TTT_PREFIX_DOCS=2500, 3 phases)
    seed: int  # random A of fresh adapters (the record: unseeded)
    asym_logit: bool  # record: false ; #1923/#1945/#2014/#2135: true (learnable caps sp, sn, trained by global SGD)
    ngram_tilt: NgramTiltConfig
    global_sgd: GlobalSgdConfig

    def model_post_init(self, _context: object) -> None:
        problems = _positive("lora_ttt", rank=self.rank, chunk_size=self.chunk_size, context=self.context,
                             batch_docs=self.batch_docs, eps=self.eps)  # fmt: skip
        problems += _non_negative("lora_ttt", lr=self.lr, local_lr_mult=self.local_lr_mult,
                                  weight_decay=self.weight_decay)  # fmt: skip
        problems += self._short_chunk_problems()
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            problems.append("eval.lora_ttt.beta1 and beta2 must lie in [0, 1)")
        if self.context < self.chunk_size:
            problems.append("eval.lora_ttt.context must be at least eval.lora_ttt.chunk_size")
        if any(b <= 0 for b in self.phases) or self.phases != sorted(set(self.phases)):
            problems.append(f"eval.lora_ttt.phases must be increasing positive document counts (got {self.phases})")
        if len(set(self.sites)) != len(self.sites):
            problems.append(f"eval.lora_ttt.sites has duplicates: {self.sites}")
        _raise(problems)

    def _short_chunk_problems(self) -> list[str]:
        limits = [s.max_len for s in self.short_chunks]
        problems = []
        if any(m <= 0 for m in limits) or any(a >= b for a, b in zip(limits, limits[1:], strict=False)):
            problems.append(f"eval.lora_ttt.short_chunks: max_len must be positive and increasing (got {limits})")
        for i, step in enumerate(self.short_chunks):
            if not 0 < step.chunk_size <= self.context:
                problems.append(f"eval.lora_ttt.short_chunks[{i}].chunk_size must lie in 1..eval.lora_ttt.context "
                                f"({self.context}) (got {step.chunk_size})")  # fmt: skip
        return problems

    def batch_chunk_size(self, longest: int) -> int:
        """The chunk size of a batch whose longest document has ``longest`` tokens (BOS through the next BOS):
        the first ``short_chunks`` entry with ``max_len >= longest``, else ``chunk_size``."""
        return next((s.chunk_size for s in self.short_chunks if s.max_len >= longest), self.chunk_size)


class ChunkSgdConfig(Section):
    """#1492 score-first TTT: score a chunk (sliding windows), then SGD on all parameters over it."""

    enabled: bool
    chunk_tokens: int  # #1492: 32768
    seq_len: int  # #1492: 2048 (scoring windows and training sequences)
    stride: int  # #1492: 64
    batch_windows: int  # #1492: 32
    epochs: int  # #1492: 3
    lr: float  # #1492: 0.005
    momentum: float  # #1492: 0.9
    cosine: bool  # #1492: true (lr * (1 + cos(pi c / (n - 1))) / 2 across chunks)
    grad_clip: float  # #1492: 1.0 (0 = off)

    def model_post_init(self, _context: object) -> None:
        problems = _positive("chunk_sgd", chunk_tokens=self.chunk_tokens, seq_len=self.seq_len, stride=self.stride,
                             batch_windows=self.batch_windows)  # fmt: skip
        problems += _non_negative("chunk_sgd", epochs=self.epochs, lr=self.lr, momentum=self.momentum,
                                  grad_clip=self.grad_clip)  # fmt: skip
        if self.stride > self.seq_len:
            problems.append("eval.chunk_sgd.stride must not exceed eval.chunk_sgd.seq_len")
        _raise(problems)


class MultiPhaseConfig(Section):
    """#1802 multi-phase global TTT: score, train on everything, re-score. NOT compliant (re-scores trained
    tokens); kept as a measured counter-example."""

    enabled: bool
    seq_len: int  # #1802: 2048
    stride: int  # #1802: 64
    batch_windows: int  # #1802: 32
    passes: int  # #1802: 2 training passes (MP_TTT_PHASES = 3 scoring phases)
    chunk_tokens: int  # #1802: 32768 (one SGD step per chunk, no last-chunk guard)
    lr: float  # #1802: MP_TTT_LR = 0.015
    momentum: float  # #1802: 0.9
    grad_clip: float  # #1802: 1.0

    def model_post_init(self, _context: object) -> None:
        problems = _positive("multi_phase", seq_len=self.seq_len, stride=self.stride, passes=self.passes,
                             batch_windows=self.batch_windows, chunk_tokens=self.chunk_tokens)  # fmt: skip
        problems += _non_negative("multi_phase", lr=self.lr, momentum=self.momentum, grad_clip=self.grad_clip)
        if self.stride > self.seq_len:
            problems.append("eval.multi_phase.stride must not exceed eval.multi_phase.seq_len")
        _raise(problems)


class AuditConfig(Section):
    """The stage's own audits (the bytes audit always runs when the val text is available)."""

    score_first: bool  # perturbation audit of every TTT mode
    docs: int = Field(ge=1)  # documents of the audit runs (the first ones)


class EvalConfig(Section):
    """The modes beyond the plain score (which is the ``score`` section's, :mod:`pgolf.eval.score`), all on the
    ``score`` section's documents."""

    progress: bool  # tqdm bars on rank 0
    compile: bool  # record: true. torch.compile the scoring/TTT forward, warmed up before the timer (CUDA only)
    sliding: SlidingConfig
    lora_ttt: LoraTttConfig
    chunk_sgd: ChunkSgdConfig
    multi_phase: MultiPhaseConfig
    audit: AuditConfig
