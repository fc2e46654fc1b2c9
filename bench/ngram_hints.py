"""The n-gram tilt's hint pass (:mod:`pgolf.eval.ngram`) on a synthetic stream: the online dict loop against the
vectorized :func:`~pgolf.eval.ngram.precompute_hints`, in targets/s and extrapolated to the 47,851,520 validation
targets of the frontier.

    python bench/ngram_hints.py                         # 1M random tokens, order 16, both passes
    python bench/ngram_hints.py --tokens 10000000 --skip-online
    python bench/ngram_hints.py --vocab 4 --order 8      # contexts repeat: most targets get a hint

The stream is random ids (vocab 8192 unless ``--vocab``) in documents of exponentially distributed length (mean
957 tokens, as the validation set); the scoring order is the record's TTT order: documents sorted by length in
batches of 64, longest batch first, chunk c (48 targets) of every document of a batch in one step. Random tokens
with the full vocab make almost every context new, the dicts' worst case. Both passes must give identical hints
(checked).
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import publish  # noqa: E402
from pgolf.eval import ngram  # noqa: E402
from tests.eval.ngram_oracle import online_hints  # noqa: E402

VAL_TARGETS = 47_851_520


def synthetic_stream(num_tokens: int, vocab: int, mean_doc: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens with BOS = 0 at every document start and at the end, the document starts)."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, vocab, num_tokens).astype(np.int32)
    lengths = np.maximum(rng.exponential(mean_doc, num_tokens // mean_doc * 2).astype(np.int64), 1) + 1
    starts = np.concatenate([[0], np.cumsum(lengths)])
    starts = starts[starts < num_tokens - 1]
    tokens[starts] = 0
    tokens[-1] = 0
    return tokens, starts


def ttt_steps(starts: np.ndarray, num_tokens: int, batch_docs: int, chunk: int) -> list:
    """The record's scoring order (module docstring) as ``(positions, doc_starts)`` steps."""
    ends = np.append(starts[1:], num_tokens - 1)  # last target of each document
    by_length = np.argsort(ends - starts, kind="stable")
    batches = [by_length[i : i + batch_docs] for i in range(0, len(by_length), batch_docs)]
    batches.sort(key=lambda b: -int((ends - starts)[b].max()))
    steps = []
    for batch in batches:
        first, last = starts[batch] + 1, ends[batch]
        for lo in range(0, int((last - first).max()) + 1, chunk):
            spans = [np.arange(f + lo, min(f + lo + chunk, e + 1)) for f, e in zip(first, last, strict=True)]
            docs = [np.full(s.size, d) for s, d in zip(spans, starts[batch], strict=True)]
            steps.append((np.concatenate(spans), np.concatenate(docs)))
    return steps


def timed(fn: Callable, *args: object) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--order", type=int, default=16)
    parser.add_argument("--vocab", type=int, default=8192, help="a small vocab makes contexts repeat")
    parser.add_argument("--skip-online", action="store_true", help="time only the vectorized pass")
    parser.add_argument("--world", type=int, default=8, help="also time one rank's share of this many ranks")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()

    tokens, starts = synthetic_stream(args.tokens, args.vocab, 957, seed=0)
    steps = ttt_steps(starts, len(tokens), batch_docs=64, chunk=48)
    targets = sum(p.size for p, _ in steps)
    rows = []
    fast, seconds = timed(ngram.precompute_hints, tokens, steps, args.order)
    rows.append(("vectorized (precompute_hints)", seconds))
    if args.world > 1:
        share, seconds = timed(ngram.precompute_hints, tokens, steps, args.order, (0, args.world))
        rows.append((f"one rank's share of {args.world} (shared_hints, before its all-reduce)", seconds))
        if not np.array_equal(share[0][share[0] >= 0], fast[0][share[0] >= 0]):
            raise SystemExit("a rank's share disagrees with the whole pass")
    if not args.skip_online:
        slow, seconds = timed(online_hints, tokens, steps, args.order)
        rows.append(("online dict loop (online_hints)", seconds))
        if not (np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])):
            raise SystemExit("the two passes disagree")
    title = f"{targets:,} targets, order {args.order}, vocab {args.vocab} (CPU, 1 thread)"
    lines = [f"## {datetime.date.today()} n-gram tilt hints: {title}",
             "", f"`python bench/ngram_hints.py {' '.join(sys.argv[1:])}`  ",
             f"{len(steps):,} scoring steps; hinted targets {(fast[0] >= 0).mean():.2%}", "",
             "| pass | seconds | targets/s | 47.85M targets |", "|---|---:|---:|---:|"]  # fmt: skip
    for name, seconds in rows:
        rate = targets / seconds
        lines.append(f"| {name} | {seconds:.2f} | {rate:,.0f} | {VAL_TARGETS / rate:,.0f} s |")
    publish(lines + [""], args.results)


if __name__ == "__main__":
    main()
