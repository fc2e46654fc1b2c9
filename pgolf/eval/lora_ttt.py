"""The record's phased score-first LoRA test-time training (PR #1855 ``eval_val_ttt_phased``).

Per batch of documents (sorted by length, ``batch_docs`` per batch, longest batches first), each document gets its
own LoRA adapters on the chosen sites (B = 0 at the start, so its first chunk is scored by the base model; A kept
from the slot's previous document when ``warm_start_a``) and a fresh AdamW state. For chunk c = 0, 1, ... of
``chunk_size`` targets, every document's window (up to ``context`` own-document tokens ending at the chunk end) is
run through the model with its adapters; the chunk's targets are **scored first**, then one AdamW step is taken on
the mean loss of those same targets, for the documents that still have a later chunk (no step after a document's
last chunk). Phases: once the documents scored so far reach each prefix count of ``phases``, all parameters get
global SGD (:mod:`pgolf.eval.sgd`) on the first that many scored documents, and adapters start afresh. One entry
(``phases: [2500]``) is the frontier's single global phase (#2014, #2135).

Frontier knobs (the official rows after the record; each off at its record value):

* ``short_chunks`` (#2014's short-document schedule): a batch's chunk size is chosen once from its longest
  document (:meth:`LoraTttConfig.batch_chunk_size`), and everything per batch uses it: its chunk count and windows,
  its compile shapes, and the no-step-after-the-last-chunk rule. Short documents get more, smaller updates.
* ``local_lr_mult`` (#1953, #2060): the per-document AdamW runs at ``lr * local_lr_mult``; global SGD keeps its lr.
* ``sites`` masks the adapters, e.g. ``[k, o, mlp, head]`` (#1953's no_qv) or ``[q, v, o, mlp, head]`` (#2135, no K).
* ``context`` up to 3072 (#2014): nothing caps it (RoPE is computed per call, the compile buckets end at it).
* ``asym_logit`` (#1923 AsymLogit): the logits z pass through ``sp*tanh(z/sp)`` for z > 0 and ``sn*tanh(z/sn)``
  otherwise (:class:`AsymSoftcap`, both caps starting at ``model.logit_softcap``) on every forward of this mode,
  chunk scoring and global SGD alike, instead of the fixed symmetric cap (and so eagerly in fp32, never the fused
  CE kernel, which knows only a symmetric cap). **The global-SGD optimizer holds sp and sn**: its loss goes through
  the cap (the frontier's goes through the fixed-cap training forward, so its sp and sn never move). The
  per-document AdamW does not: it holds only LoRA parameters, so the caps change only at the phase pauses, from
  already-scored documents, identically on every rank (an AdamW copy per rank would drift with the round-robin
  batches and its weight decay would pull the caps toward 0). The caps live at evaluation time only, on this
  mode's state, never in the model or the artifact (0 bytes; the frontier stores them as 8 fp16 bytes); their
  values after each segment are in the mode's ``phases`` rows (``asym_sp``, ``asym_sn``; the last row = final).

Deliberate differences (legality is the same; determinism is better):

* Batches go to ranks round-robin in queue order, not through a flock'ed file counter in /tmp; a phase starts
  after the queue position where the scored-document count crosses its boundary, so the documents scored under
  each base model (and the global-SGD document set: the first ``boundary`` documents in processing order) are the
  same for any world size and any timing. Phase barriers are implicit in the gradient all-reduces.
* Fresh adapters draw A from a generator seeded by ``seed`` and the batch's queue position.
* The global-SGD stream concatenates the documents as BOS + tokens (the next document's BOS is the end-of-document
  target), without the record's harmless "BOS BOS" pairs.
* Every chunk's forward runs with grad enabled, the last one too (one compiled graph per shape, not two).

With ``eval.compile`` the chunk forward is compiled (:mod:`pgolf.score.compile`): one graph per (batch size, width
bucket) this rank meets, warmed up on random tokens through throw-away adapters before the timer starts; the
adapters are graph inputs. Global SGD runs eagerly, as in the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from pgolf.config import (
    ConfigError,
)
from pgolf.dist import to_device
from pgolf.eval.config import LoraTttConfig
from pgolf.eval.sgd import train_stream
from pgolf.model.lora import BatchedLoRA
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.compile import MIN_SCORED, MIN_WIDTH, EvalForward, Shape, warmup, warmup_shapes
from pgolf.score.documents import Document, chunk_window, num_chunks
from pgolf.score.scores import EvalContext, ModeResult, Scores, model_device, set_trainable

if TYPE_CHECKING:
    from pgolf.eval.ngram import NgramTilt, Steps


def doc_queue(docs: list[Document], batch_docs: int) -> list[list[Document]]:
    """Documents sorted by length (ascending, stable) in batches, queued longest batch first, as the record."""
    by_length = sorted(docs, key=lambda d: d.num_targets)
    batches = [by_length[i : i + batch_docs] for i in range(0, len(by_length), batch_docs)]
    return sorted(batches, key=lambda b: -b[-1].num_targets)


def phase_ends(queue: list[list[Document]], phases: list[int]) -> list[tuple[int, int]]:
    """(queue position after which the phase runs, prefix document count) for each phase that has documents
    left to score after it; a boundary beyond the document count is clipped to it, as in the record."""
    total = sum(len(b) for b in queue)
    cumulative = np.cumsum([len(b) for b in queue])
    ends = []
    for boundary in sorted({min(p, total) for p in phases}):
        q = int(np.searchsorted(cumulative, boundary))
        if q < len(queue) - 1 and (not ends or ends[-1][0] != q):
            ends.append((q, boundary))
    return ends


def rank_positions(segments: list[tuple[int, int]], rank: int, world_size: int) -> list[int]:
    """The queue positions this rank runs: round-robin within each phase segment ``[lo, hi)``."""
    return [p for lo, hi in segments for p in range(lo + rank, hi, world_size)]


def batch_chunk_size(batch: list[Document], cfg: LoraTttConfig) -> int:
    """The chunk size of a batch, from its longest document's tokens (BOS through the next BOS, #2014's doc_len)."""
    return cfg.batch_chunk_size(max(d.num_targets for d in batch) + 1)


def chunk_widths(batch: list[Document], cfg: LoraTttConfig) -> list[int]:
    """The longest window of each chunk step of a batch: ``min((c + 1) C, longest document, context)`` with the
    batch's chunk size C."""
    longest, size = max(d.num_targets for d in batch), batch_chunk_size(batch, cfg)
    return [min((c + 1) * size, longest, cfg.context) for c in range(-(-longest // size))]


def asym_softcap(z: Tensor, sp: Tensor, sn: Tensor) -> Tensor:
    """AsymLogit: ``c*tanh(z/c)`` with the cap ``c = sp`` where z > 0 and ``c = sn`` elsewhere."""
    cap = torch.where(z > 0, sp, sn)
    return cap * torch.tanh(z / cap)


class AsymSoftcap(nn.Module):
    """The two learnable logit caps of AsymLogit (module docstring), both starting at the model's fixed cap."""

    def __init__(self, cap: float) -> None:
        super().__init__()
        self.sp = nn.Parameter(torch.tensor(float(cap)))
        self.sn = nn.Parameter(torch.tensor(float(cap)))

    def forward(self, z: Tensor) -> Tensor:
        return asym_softcap(z, self.sp.to(z.dtype), self.sn.to(z.dtype))


def logit_cap_for(model: nn.Module, cfg: LoraTttConfig) -> AsymSoftcap | None:
    """The mode's eval-time cap: a frozen-until-global-SGD :class:`AsymSoftcap` when ``asym_logit``, else None."""
    if not cfg.asym_logit:
        return None
    if model.cfg.logit_softcap <= 0:
        raise ConfigError("eval.lora_ttt.asym_logit needs model.logit_softcap > 0 (the caps start at it)")
    cap = AsymSoftcap(model.cfg.logit_softcap).to(model_device(model))
    set_trainable(cap, False)  # trained by global SGD only (pgolf.eval.sgd.train_stream)
    return cap


def scoring_steps(queue: list[list[Document]], cfg: LoraTttConfig) -> Steps:
    """The pass's scoring order, the same on every rank and for any world size: the batches in queue order, each
    batch's chunk steps in order, one step = chunk c of every document of the batch (its target stream positions
    and their documents' BOS positions). On one rank it is exactly the order of the recorder's scoring steps."""
    steps = []
    for batch in queue:
        size = batch_chunk_size(batch, cfg)
        for c in range(max(num_chunks(d, size) for d in batch)):
            spans = [(d.start, c * size, min((c + 1) * size, d.num_targets)) for d in batch if c * size < d.num_targets]
            positions = np.concatenate([np.arange(start + 1 + lo, start + 1 + hi) for start, lo, hi in spans])
            starts = np.concatenate([np.full(hi - lo, start) for start, lo, hi in spans])
            steps.append((positions, starts))
    return steps


def _fresh_lora(model: nn.Module, cfg: LoraTttConfig, batch: int, looped: bool, seed: int) -> BatchedLoRA:
    """Fresh adapters for ``batch`` documents, built on the model's device from a generator seeded by ``seed`` (the
    run's own random state is never touched)."""
    schedule, device = model.schedule(looped), model_device(model)
    num_slots = len(schedule.encoder) + len(schedule.decoder)
    return BatchedLoRA(model.cfg, sites=cfg.sites, num_slots=num_slots, batch=batch, rank=cfg.rank, alpha=cfg.alpha,
                       device=device, generator=torch.Generator(device=device).manual_seed(seed))  # fmt: skip


class LoraTtt:
    """The per-rank state of the phased TTT: the reusable adapters (warm A) and the running scores."""

    def __init__(self, forward: EvalForward, val: ValData, cfg: LoraTttConfig, scores: Scores,
                 ctx: EvalContext) -> None:  # fmt: skip
        self.forward, self.val, self.cfg, self.scores, self.ctx = forward, val, cfg, scores, ctx
        self.model, self.looped, self.logit_cap = forward.model, forward.looped, forward.logit_cap
        self.lora: BatchedLoRA | None = None
        self.on_scored: Callable[[int], object] | None = None  # called with each chunk step's scored targets
        self.tilt: NgramTilt | None = None  # the n-gram tilt of the scores (eval.lora_ttt.ngram_tilt)

    def warmup_shapes(self, queue: list[list[Document]]) -> list[Shape]:
        """The warm-up's shapes, from the configuration and the whole queue (the same on every rank): the largest
        chunk call (``batch_docs`` rows, the context, the largest chunk) and a small one, and a one-document batch's
        if the queue has one (a size of one specializes the dynamic graph)."""
        cfg = self.cfg
        scored = max([cfg.chunk_size, *(s.chunk_size for s in cfg.short_chunks)])
        shapes = warmup_shapes(self.forward, cfg.batch_docs, cfg.context, scored)
        if shapes and any(len(b) == 1 for b in queue):
            shapes.append(self.forward.shape(1, MIN_WIDTH, MIN_SCORED))
        return shapes

    def throwaway_lora(self, batch: int) -> BatchedLoRA:
        """Adapters for the warm-up (drawn under a forked RNG: the run's own draws do not change)."""
        return _fresh_lora(self.model, self.cfg, batch, self.looped, seed=0)

    def adapters_for(self, batch: int, position: int) -> BatchedLoRA:
        """The reusable adapters reset for a full batch (B = 0; A kept or redrawn), else fresh ones, as the record."""
        seed = self.cfg.seed * 1_000_003 + position
        if batch != self.cfg.batch_docs:
            return _fresh_lora(self.model, self.cfg, batch, self.looped, seed)
        if self.lora is None or not self.cfg.warm_start_a:
            self.lora = _fresh_lora(self.model, self.cfg, batch, self.looped, seed)
        else:
            self.lora.reset(reset_a=False)
        return self.lora

    def local_optimizer(self, lora: BatchedLoRA) -> torch.optim.AdamW:
        """A batch's fresh AdamW over its adapters only, at ``lr * local_lr_mult``."""
        cfg = self.cfg
        return torch.optim.AdamW(lora.parameters(), lr=cfg.lr * cfg.local_lr_mult, betas=(cfg.beta1, cfg.beta2),
                                 eps=cfg.eps, weight_decay=cfg.weight_decay)  # fmt: skip

    def run_batch(self, docs: list[Document], position: int) -> None:
        """Score every chunk of a batch of documents, each chunk before the AdamW step that learns from it."""
        cfg, device = self.cfg, self.forward.device
        lora = self.adapters_for(len(docs), position)
        opt = self.local_optimizer(lora)
        size = batch_chunk_size(docs, cfg)
        chunks = np.array([num_chunks(d, size) for d in docs])
        for c in range(int(chunks.max())):
            rows = self.forward.gather(self.val, [chunk_window(d, c, size, cfg.context) for d in docs])
            inputs, targets, mask, cols = rows.tensors(device)
            if self.tilt is None:
                with torch.enable_grad():
                    nats = self.forward(inputs, targets, lora, cols=cols)
                scored = nats
            else:  # the tilt scores; the update learns from the untilted loss
                hints = self.tilt.hints_for(rows, device)
                with torch.enable_grad():
                    nats, log_p_hint = self.forward(inputs, targets, lora, hints=hints, cols=cols)
                scored = self.tilt.score(nats, log_p_hint, rows, targets, hints)
            self.scores.add(scored, rows, mask)  # score first ...
            if self.on_scored is not None:
                self.on_scored(int(rows.mask.sum()))
            if (chunks > c + 1).any():  # ... then learn from the chunk just scored, only where a later chunk remains
                more = to_device(chunks > c + 1, device)[:, None] & mask
                weights = more / mask.sum(1, keepdim=True).clamp(min=1)
                opt.zero_grad(set_to_none=True)
                (nats.float() * weights).sum().backward()
                opt.step()

    def global_sgd(self, scored: list[Document]) -> None:
        """Full-parameter SGD on the scored documents' tokens; adapters start afresh afterwards."""
        tokens = self.val.tokens
        stream = np.concatenate([tokens[d.start : d.end - 1] for d in scored] + [tokens[scored[-1].end - 1 :][:1]])
        train_stream(self.model, stream, self.cfg.global_sgd, self.ctx, skip_last_chunk=True, logit_cap=self.logit_cap)
        self.lora = None

    def cap_values(self) -> dict[str, float]:
        """The AsymLogit caps now (for the phase rows), or nothing when the mode has none."""
        cap = self.logit_cap
        return {} if cap is None else {"asym_sp": float(cap.sp), "asym_sn": float(cap.sn)}


def evaluate_lora_ttt(
    model: nn.Module, val: ValData, docs: list[Document], cfg: LoraTttConfig, ctx: EvalContext
) -> ModeResult:
    """Phased score-first LoRA TTT over ``docs``; ``model`` is adapted in place (pass a copy). The chunk forward
    is compiled with ``ctx.compile_backend`` (None: eager); the warm-up is not timed."""
    model.eval()
    set_trainable(model, False)
    scores = Scores(model_device(model), ctx.recorder)
    forward = EvalForward(model, ctx.looped, ctx.compile_backend, max_width=cfg.context,
                          logit_cap=logit_cap_for(model, cfg), hints=cfg.ngram_tilt.enabled, min_rows=0)  # fmt: skip
    ttt = LoraTtt(forward, val, cfg, scores, ctx)
    queue = doc_queue(docs, cfg.batch_docs)
    ends = phase_ends(queue, cfg.phases)
    cuts = [0] + [q + 1 for q, _ in ends] + [len(queue)]  # phase k runs after queue[:cuts[k + 1]]
    segments = list(zip(cuts[:-1], cuts[1:], strict=True))
    mine = [queue[p] for p in rank_positions(segments, ctx.rank, ctx.world_size)]
    stats = warmup(ttt.forward, ttt.warmup_shapes(queue), adapters=ttt.throwaway_lora)
    start = time.perf_counter()
    seconds, phases = {"sgd": 0.0}, []
    if cfg.ngram_tilt.enabled:  # reads validation tokens: inside the timer
        from pgolf.eval.ngram import NgramTilt  # the tilt's code: carried only when it is on

        ttt.tilt = NgramTilt(val, scoring_steps(queue, cfg), cfg.ngram_tilt, model_device(model))
        seconds["ngram_hints"] = time.perf_counter() - start
    bar = tqdm(total=sum(d.num_targets for b in mine for d in b), desc="lora_ttt (scored targets)", unit="tok",
               unit_scale=True, disable=not (ctx.progress and ctx.rank == 0), leave=False, mininterval=1)  # fmt: skip
    ttt.on_scored = bar.update
    before = BpbTotals()
    with bar:
        for k, (lo, hi) in enumerate(segments):
            for position in rank_positions([(lo, hi)], ctx.rank, ctx.world_size):
                ttt.run_batch(queue[position], position)
            so_far = scores.totals()  # a collective: every rank reaches each segment end
            segment = BpbTotals(so_far.nats - before.nats, so_far.tokens - before.tokens, so_far.bytes - before.bytes)
            before = so_far
            row = {"segment": k, "documents": sum(len(b) for b in queue[:hi]), "segment_val_bpb": segment.val_bpb,
                   "val_bpb_so_far": so_far.val_bpb, "sgd_docs": 0}  # fmt: skip
            if k < len(ends):
                boundary = ends[k][1]
                scored = [d for batch in queue[:hi] for d in batch][:boundary]
                t0 = time.perf_counter()
                ttt.global_sgd(scored)
                seconds["sgd"] += time.perf_counter() - t0
                row["sgd_docs"] = boundary
            phases.append(row | ttt.cap_values())
    totals = scores.totals()
    seconds["eval"] = time.perf_counter() - start
    details = {} if ttt.tilt is None else {"ngram_tilt": ttt.tilt.summary(totals, seconds["ngram_hints"])}
    return ModeResult(
        "lora_ttt", totals, seconds, phases=phases, compile=stats.finish("lora_ttt", forward), details=details
    )
