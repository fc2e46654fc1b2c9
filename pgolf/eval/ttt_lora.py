"""The record's phased score-first LoRA test-time training (PR #1855 ``eval_val_ttt_phased``, spec A6).

Per batch of documents (sorted by length, ``batch_docs`` per batch, longest batches first), each document gets its
own LoRA adapters on the chosen sites (B = 0 at the start, so its first chunk is scored by the base model; A kept
from the slot's previous document when ``warm_start_a``) and a fresh AdamW state. For chunk c = 0, 1, ... of
``chunk_size`` targets, every document's window (up to ``context`` own-document tokens ending at the chunk end) is
run through the model with its adapters; the chunk's targets are **scored first**, then one AdamW step is taken on
the mean loss of those same targets, for the documents that still have a later chunk (no step after a document's
last chunk). Phases: once the documents scored so far reach each prefix count of ``phases``, all parameters get
global SGD (:mod:`pgolf.eval.sgd`) on the first that many scored documents, and adapters start afresh.

Deliberate differences (legality is the same, A6.11; determinism is better):

* Batches go to ranks round-robin in queue order, not through a flock'ed file counter in /tmp; a phase starts
  after the queue position where the scored-document count crosses its boundary, so the documents scored under
  each base model (and the global-SGD document set: the first ``boundary`` documents in processing order) are the
  same for any world size and any timing. Phase barriers are implicit in the gradient all-reduces.
* Fresh adapters draw A from a generator seeded by ``seed`` and the batch's queue position.
* The global-SGD stream concatenates the documents as BOS + tokens (the next document's BOS is the end-of-document
  target), without the record's harmless "BOS BOS" pairs.
* Every chunk's forward runs with grad enabled, the last one too (one compiled graph per shape, not two).

With ``eval.compile`` the chunk forward is compiled (:mod:`pgolf.eval.compile`): one graph per (batch size, width
bucket) this rank meets, warmed up on random tokens through throw-away adapters before the timer starts; the
adapters are graph inputs. Global SGD runs eagerly, as in the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pgolf.dist import to_device
from pgolf.eval.bpb import BpbTotals, ValData
from pgolf.eval.common import EvalContext, ModeResult, Scores, model_device, set_trainable
from pgolf.eval.compile import EvalForward, warmup
from pgolf.eval.config import LoraTttConfig
from pgolf.eval.documents import Document, chunk_window, num_chunks
from pgolf.eval.sgd import train_stream
from pgolf.model.lora import BatchedLoRA


def doc_queue(docs: list[Document], batch_docs: int) -> list[list[Document]]:
    """Documents sorted by length (ascending, stable) in batches, queued longest batch first (A6.5)."""
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


def chunk_widths(batch: list[Document], cfg: LoraTttConfig) -> list[int]:
    """The longest window of each chunk step of a batch: ``min((c + 1) C, longest document, context)``."""
    longest = max(d.num_targets for d in batch)
    return [min((c + 1) * cfg.chunk_size, longest, cfg.context) for c in range(-(-longest // cfg.chunk_size))]


def _fresh_lora(model: nn.Module, cfg: LoraTttConfig, batch: int, looped: bool, seed: int) -> BatchedLoRA:
    schedule = model.schedule(looped)
    num_slots = len(schedule.encoder) + len(schedule.decoder)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        lora = BatchedLoRA(model.cfg, sites=cfg.sites, num_slots=num_slots, batch=batch, rank=cfg.rank,
                           alpha=cfg.alpha)  # fmt: skip
    return lora.to(model_device(model))


class LoraTtt:
    """The per-rank state of the phased TTT: the reusable adapters (warm A) and the running scores."""

    def __init__(self, forward: EvalForward, val: ValData, cfg: LoraTttConfig, scores: Scores) -> None:
        self.forward, self.val, self.cfg, self.scores = forward, val, cfg, scores
        self.model, self.looped = forward.model, forward.looped
        self.lora: BatchedLoRA | None = None
        self.on_scored: Callable[[int], object] | None = None  # called with each chunk step's scored targets

    def warmup_shapes(self, batches: list[list[Document]]) -> set[tuple[int, int]]:
        """The (rows, width) of every chunk step of these batches (what :meth:`run_batch` will call)."""
        return {self.forward.shape(len(b), w) for b in batches for w in set(chunk_widths(b, self.cfg))}

    def throwaway_lora(self, batch: int) -> BatchedLoRA:
        """Adapters for the warm-up (drawn under a forked RNG: the run's own draws do not change)."""
        return _fresh_lora(self.model, self.cfg, batch, self.looped, seed=0)

    def adapters_for(self, batch: int, position: int) -> BatchedLoRA:
        """The reusable adapters reset for a full batch (B = 0; A kept or redrawn), else fresh ones (A6.7.5)."""
        seed = self.cfg.seed * 1_000_003 + position
        if batch != self.cfg.batch_docs:
            return _fresh_lora(self.model, self.cfg, batch, self.looped, seed)
        if self.lora is None or not self.cfg.warm_start_a:
            self.lora = _fresh_lora(self.model, self.cfg, batch, self.looped, seed)
        else:
            self.lora.reset(reset_a=False)
        return self.lora

    def run_batch(self, docs: list[Document], position: int) -> None:
        """Score every chunk of a batch of documents, each chunk before the AdamW step that learns from it."""
        cfg, device = self.cfg, self.forward.device
        lora = self.adapters_for(len(docs), position)
        opt = torch.optim.AdamW(lora.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                weight_decay=cfg.weight_decay)  # fmt: skip
        chunks = np.array([num_chunks(d, cfg.chunk_size) for d in docs])
        for c in range(int(chunks.max())):
            rows = self.forward.gather(self.val, [chunk_window(d, c, cfg.chunk_size, cfg.context) for d in docs])
            inputs, targets, mask = rows.tensors(device)
            with torch.enable_grad():
                nats = self.forward(inputs, targets, lora)
            self.scores.add(nats, rows, mask)  # score first ...
            if self.on_scored is not None:
                self.on_scored(int(rows.mask.sum()))
            if (chunks > c + 1).any():  # ... then learn from the chunk just scored, only where a later chunk remains
                more = to_device(chunks > c + 1, device)[:, None] & mask
                weights = more / mask.sum(1, keepdim=True).clamp(min=1)
                opt.zero_grad(set_to_none=True)
                (nats.float() * weights).sum().backward()
                opt.step()

    def global_sgd(self, scored: list[Document], rank: int, world_size: int) -> None:
        """Full-parameter SGD on the scored documents' tokens; adapters start afresh afterwards."""
        g = self.cfg.global_sgd
        tokens = self.val.tokens
        stream = np.concatenate([tokens[d.start : d.end - 1] for d in scored] + [tokens[scored[-1].end - 1 :][:1]])
        train_stream(self.model, stream, lr=g.lr, momentum=g.momentum, epochs=g.epochs, chunk_tokens=g.chunk_tokens,
                     seq_len=g.seq_len, grad_clip=g.grad_clip, skip_last_chunk=True, looped=self.looped,
                     bos_id=self.model.cfg.bos_id, rank=rank, world_size=world_size)  # fmt: skip
        self.lora = None


def evaluate_lora_ttt(
    model: nn.Module,
    val: ValData,
    docs: list[Document],
    cfg: LoraTttConfig,
    *,
    ctx: EvalContext,
) -> ModeResult:
    """Phased score-first LoRA TTT over ``docs``; ``model`` is adapted in place (pass a copy). ``compile_backend``:
    compile the chunk forward with it (None: eager); the warm-up is not timed."""
    looped, rank, world_size = ctx.looped, ctx.rank, ctx.world_size
    recorder, progress, compile_backend = ctx.recorder, ctx.progress, ctx.compile_backend
    model.eval()
    set_trainable(model, False)
    scores = Scores(model_device(model), recorder)
    ttt = LoraTtt(EvalForward(model, looped, compile_backend, max_width=cfg.context), val, cfg, scores)
    queue = doc_queue(docs, cfg.batch_docs)
    ends = phase_ends(queue, cfg.phases)
    cuts = [0] + [q + 1 for q, _ in ends] + [len(queue)]  # phase k runs after queue[:cuts[k + 1]]
    segments = list(zip(cuts[:-1], cuts[1:], strict=True))
    mine = [queue[p] for p in rank_positions(segments, rank, world_size)]
    stats = warmup(ttt.forward, ttt.warmup_shapes(mine), adapters=ttt.throwaway_lora)
    start = time.perf_counter()
    seconds, phases = {"sgd": 0.0}, []
    bar = tqdm(total=sum(d.num_targets for b in mine for d in b), desc="lora_ttt (scored targets)", unit="tok",
               unit_scale=True, disable=not (progress and rank == 0), leave=False, mininterval=1)  # fmt: skip
    ttt.on_scored = bar.update
    before = BpbTotals()
    with bar:
        for k, (lo, hi) in enumerate(segments):
            for position in rank_positions([(lo, hi)], rank, world_size):
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
                ttt.global_sgd(scored, rank, world_size)
                seconds["sgd"] += time.perf_counter() - t0
                row["sgd_docs"] = boundary
            phases.append(row)
    totals = scores.totals()
    seconds["eval"] = time.perf_counter() - start
    return ModeResult("lora_ttt", totals, seconds, phases=phases, compile=stats.finish("lora_ttt"))
