"""#1492 / #1493 score-first chunk TTT: sliding-window scoring interleaved with full-parameter SGD.

The scored documents, in stream order, form one contiguous stretch of the val stream whose targets are cut into
chunks of ``chunk_tokens``. Each sliding window (per document, :mod:`pgolf.eval.sliding`) belongs to the chunk that
holds its first scored target. For chunk k: (1) score all its windows under no_grad with the current model, then
(2) ``epochs`` SGD steps on the chunk's own targets (all parameters, momentum, lr cosine across chunks, gradient
clip, optimizer state kept across chunks). The last chunk is never trained on. A target of chunk k is only ever
scored by windows of chunks <= k, i.e. before any step that trained on it.

Deliberate differences from #1492: windows and training sequences never cross a document (the reference slides
over the flat stream), the stream is the selected documents rather than the whole truncated val stream, and a
chunk trains on all its targets (the reference: its full 2048-token sequences only).
"""

from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pgolf.eval.config import ChunkSgdConfig
from pgolf.eval.sgd import chunk_spans, cosine_lr, sgd_step
from pgolf.score.bpb import ValData
from pgolf.score.documents import Document, Window
from pgolf.score.scorer import document_windows, fixed_model_forward
from pgolf.score.scores import (
    EvalContext,
    ModeResult,
    Scores,
    model_device,
    score_windows,
    set_trainable,
)


def stream_of(val: ValData, docs: list[Document]) -> tuple[int, np.ndarray]:
    """(stream position of the first token, tokens) of the contiguous stretch that holds ``docs``."""
    ordered = sorted(docs, key=lambda d: d.start)
    if any(a.end - 1 != b.start for a, b in zip(ordered, ordered[1:], strict=False)):
        raise ValueError("chunk TTT needs contiguous documents (a prefix of the val stream, score.docs)")
    return ordered[0].start, np.asarray(val.tokens[ordered[0].start : ordered[-1].end])


def windows_by_chunk(windows: list[Window], offset: int, chunk_tokens: int) -> dict[int, list[Window]]:
    """Windows keyed by the chunk of their first scored target (target index = stream position - offset - 1)."""
    chunks: dict[int, list[Window]] = defaultdict(list)
    for w in windows:
        first_target = w[0] + w[2] + 1 - offset - 1
        chunks[first_target // chunk_tokens].append(w)
    return chunks


def evaluate_chunk_sgd(
    model: nn.Module, val: ValData, docs: list[Document], cfg: ChunkSgdConfig, ctx: EvalContext
) -> ModeResult:
    """#1492 chunk score-first SGD TTT over ``docs``; ``model`` is adapted in place (pass a copy). The scoring
    forward is compiled with ``ctx.compile_backend`` (None: eager), the SGD steps run eagerly."""
    scores = Scores(model_device(model), ctx.recorder)
    offset, stream = stream_of(val, docs)
    spans = chunk_spans(len(stream) - 1, cfg.chunk_tokens)
    chunks = windows_by_chunk(document_windows(docs, cfg.seq_len, cfg.stride), offset, cfg.chunk_tokens)
    forward, stats = fixed_model_forward(model, seq_len=cfg.seq_len, batch_windows=cfg.batch_windows,
                                         looped=ctx.looped, compile_backend=ctx.compile_backend)  # fmt: skip
    start = time.perf_counter()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    seconds = {"score": 0.0, "sgd": 0.0}
    bar = tqdm(spans, desc="chunk_sgd", unit="chunk", disable=not (ctx.progress and ctx.rank == 0), leave=False)
    for k, span in enumerate(bar):
        t0 = time.perf_counter()
        set_trainable(model, False)
        model.eval()
        score_windows(forward, val, chunks.get(k, []), scores, batch_windows=cfg.batch_windows, rank=ctx.rank,
                      world_size=ctx.world_size)  # fmt: skip
        t1 = time.perf_counter()
        seconds["score"] += t1 - t0
        if k == len(spans) - 1:
            break  # the last chunk is never trained on
        set_trainable(model, True)
        model.train()
        lr = cosine_lr(cfg.lr, k, len(spans)) if cfg.cosine else cfg.lr
        for _ in range(cfg.epochs):
            sgd_step(model, opt, stream, span, lr=lr, seq_len=cfg.seq_len, grad_clip=cfg.grad_clip, ctx=ctx)
        seconds["sgd"] += time.perf_counter() - t1
    set_trainable(model, False)
    model.eval()
    totals = scores.totals()
    seconds["eval"] = time.perf_counter() - start
    return ModeResult("chunk_sgd", totals, seconds, compile=stats.finish("chunk_sgd", forward))
