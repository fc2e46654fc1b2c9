"""The causal token-only n-gram "tilt" of the frontier's official row #2135.

What it computes. Every scored target gets a *hint* from online count tables keyed by its context, the previous
``order - 1`` tokens: the context's most frequent next token so far, h, with confidence r = top count / total.
Where r >= ``threshold`` the scored distribution is tilted towards h by ``boost`` = beta:

    p'(a) = p(a) e^(beta [a = h]) / Z,   Z = 1 + p(h) (e^beta - 1),
    l'    = l - beta [y = h] + log1p(p(h) expm1(beta))          (l = -log p(y), the untilted loss)

which is a full normalized distribution over the vocabulary by construction (C2). The TTT update keeps using the
untilted loss; only l' enters the BPB sums (that wiring belongs to the mode).

Tables (per context key): total count, top token, top count, and a count per (key, token) pair. Adding the pair
(key, y): total += 1, pair += 1, and y becomes the top token only if its pair count now *strictly* exceeds the top
count (so of two tokens with equal counts, the one that got there first stays on top). A key never seen gives no
hint (-1, confidence 0).

Keys. The context of the target at stream position j is ``tokens[doc.start .. j-1]`` of its OWN document (BOS
included), its last ``order - 1`` tokens, left-padded with a sentinel where the document prefix is shorter, so every
target has a key. The key is XOR_k v_k * c_k in uint64 wrap-around arithmetic, slot k = 0 the oldest, with
v_k = token + 1 and v_k = 0 for the sentinel. c_k is the k-th output of SplitMix64 seeded with 0, ORed with 1
(c_0 = 0xE220A8397B1DCDAF, c_1 = 0x6E789E6AA1B965F5, c_2 = 0x06C45D188009454F, ...; :data:`SLOT_CONSTANTS`). Being
odd, c_k is invertible modulo 2^64, so a slot's term is 0 for the sentinel and non-zero for every token id: the
sentinel hashes differently from all tokens. As in the frontier, colliding keys are not detected.

Scoring order, not stream order. The frontier runs its hint pass once over the whole stream, left to right. TTT
scores documents in a length-sorted order, so there a hint may count pairs of documents that come earlier in the
stream but are scored later (a caveat the frontier row notes itself), which our score-first audit
(:mod:`pgolf.eval.audit`) would flag. Here the tables follow the *scoring* order: the hint of a target scored at
step s uses only the pairs of targets scored at steps < s (any document, the same document's earlier chunks
included); after a step's lookups, its own pairs are added in stream-position order (which fixes the tie rule).
:func:`precompute_hints` computes all hints at once from the known step list (sorting; exactly the result of the
online dict tables the tests hold as the reference); it reads validation tokens, so it runs inside the eval timer.

Legality kept, and the audits that check it:

* C1 (a position's distribution depends only on what precedes it) and C3 (score before update):
  :func:`pgolf.eval.ngram_audit.causality_audit` changes one scored token and recomputes all hints; the hints of every
  target scored at the same or an earlier step, and of the document's own targets up to that token, must not
  change (except the document's targets after it, whose context holds the changed token: C1 allows that).
* C2 (full normalized distribution) and the C1 side of the tilt itself:
  :func:`pgolf.eval.ngram_audit.normalization_audit` scores every candidate target through the mode's scorer and checks
  that the implied distribution sums to 1, equals the target-free tilt, and does not move when the other
  positions' targets change.
* C4 (each token scored once): :func:`precompute_hints` refuses a position that two steps score.

What does not exist here: the frontier code's within-word and word-start experts and its agreement bonus. They
are gated by properties of the realized target (``boundary_lut[y]``, ``starts_new_word_lut[y]``), which breaks C1
(the #1967 review). Only the token expert exists and no parameter can turn the others on.

References: Issue #1017 (the conditions C1-C4); the tilt's lineage: PRs #1145, #1420, #1514, #1967, #2130, #2135.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pgolf.dist import all_reduce_max, group_rank_world, to_device
from pgolf.eval.config import NgramTiltConfig
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.documents import Rows
from pgolf.score.scores import Scores

Steps = list[tuple[np.ndarray, np.ndarray]]  # scoring order: (target stream positions, their documents' BOS positions)


def _splitmix64(count: int) -> list[int]:
    mask, state, out = (1 << 64) - 1, 0, []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & mask
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        out.append(z ^ (z >> 31))
    return out


SLOT_CONSTANTS = np.array([c | 1 for c in _splitmix64(64)], dtype=np.uint64)  # c_k, slot 0 = the oldest token
_SPAN_BLOCK = 1 << 16


def slot_keys(tokens: np.ndarray, positions: np.ndarray, prefix: np.ndarray, num_slots: int) -> np.ndarray:
    """The keys slot by slot (any targets): ``prefix`` = own-document tokens before each target, BOS included."""
    keys = np.zeros(positions.shape, dtype=np.uint64)
    for k in range(num_slots):
        back = num_slots - k  # slot k holds the token ``back`` positions before the target
        values = tokens[np.maximum(positions - back, 0)].astype(np.uint64)
        values += np.uint64(1)
        values[prefix < back] = 0  # the sentinel
        values *= SLOT_CONSTANTS[k]
        keys ^= values
    return keys


def _span_keys(tokens: np.ndarray, positions: np.ndarray, num_slots: int) -> np.ndarray:
    """The keys of targets with a full own-document context, computed over the stream span they cover with
    contiguous slices (no per-slot gathers), then picked."""
    lo, hi = int(positions.min()), int(positions.max()) + 1
    window = tokens[lo - num_slots : hi - 1].astype(np.uint64) + np.uint64(1)  # window[i + k] = slot k of lo + i
    span, term = np.zeros(hi - lo, dtype=np.uint64), np.empty(_SPAN_BLOCK, dtype=np.uint64)
    for start in range(0, hi - lo, _SPAN_BLOCK):  # blocks that stay in cache across the slots
        out = span[start : start + _SPAN_BLOCK]
        for k in range(num_slots):
            np.multiply(window[start + k : start + k + out.size], SLOT_CONSTANTS[k], out=term[: out.size])
            out ^= term[: out.size]
    return span[positions - lo]


def context_keys(tokens: np.ndarray, positions: np.ndarray, doc_starts: np.ndarray, order: int) -> np.ndarray:
    """The uint64 key of each target: the hash of its own document's previous ``order - 1`` tokens, sentinel
    padded (module docstring); ``doc_starts[i]`` is the BOS position of the document of ``positions[i]``."""
    positions, doc_starts = np.asarray(positions, dtype=np.int64), np.asarray(doc_starts, dtype=np.int64)
    num_slots = order - 1
    if num_slots > SLOT_CONSTANTS.size:
        raise ValueError(f"order {order} exceeds the {SLOT_CONSTANTS.size + 1} the slot constants allow")
    prefix = positions - doc_starts
    full = prefix >= num_slots
    if num_slots == 0 or not full.any() or np.ptp(positions[full]) > 4 * positions.size:  # sparse: slot by slot
        return slot_keys(tokens, positions, prefix, num_slots)
    keys = np.empty(positions.shape, dtype=np.uint64)
    keys[full] = _span_keys(tokens, positions[full], num_slots)
    keys[~full] = slot_keys(tokens, positions[~full], prefix[~full], num_slots)
    return keys


def scoring_order(tokens: np.ndarray, steps: Steps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positions, doc_starts, step index) of all scored targets in update order: steps in order, stream order
    inside a step. Checks that every position is a target scored once (C4) and every doc start is a BOS."""
    parts = [(np.asarray(p, dtype=np.int64).ravel(), np.asarray(d, dtype=np.int64).ravel()) for p, d in steps]
    if any(p.shape != d.shape for p, d in parts):
        raise ValueError("each step needs one doc start per target position")
    orders = [np.argsort(p, kind="stable") for p, _ in parts]
    positions = np.concatenate([np.zeros(0, np.int64)] + [p[o] for (p, _), o in zip(parts, orders, strict=True)])
    doc_starts = np.concatenate([np.zeros(0, np.int64)] + [d[o] for (_, d), o in zip(parts, orders, strict=True)])
    step_ids = np.repeat(np.arange(len(parts)), [p.size for p, _ in parts])
    _check_targets(tokens, positions, doc_starts)
    return positions, doc_starts, step_ids


def _check_targets(tokens: np.ndarray, positions: np.ndarray, doc_starts: np.ndarray) -> None:
    if positions.size == 0:
        return
    if positions.min() < 1 or positions.max() >= len(tokens) or doc_starts.min() < 0:
        raise ValueError("a target position lies outside the token stream")
    if (doc_starts >= positions).any():
        raise ValueError("a target's document must start (BOS) before the target")
    if np.bincount(positions, minlength=len(tokens)).max() > 1:
        raise ValueError("a target is scored by more than one step (C4: each token is scored exactly once)")
    bos = tokens[doc_starts]
    if (bos != bos[0]).any() or tokens.min() < 0:
        raise ValueError("the doc starts are not all the same (BOS) id, or the stream has negative ids")


def _full_arrays(
    num_positions: int, positions: np.ndarray, hints: np.ndarray, confidences: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per-target hints spread over all stream positions (-1 / 0.0 elsewhere)."""
    hint, confidence = np.full(num_positions, -1, dtype=np.int64), np.zeros(num_positions, dtype=np.float64)
    hint[positions], confidence[positions] = hints, confidences
    return hint, confidence


def _segment_starts(new_segment: np.ndarray) -> np.ndarray:
    """For each element, the index of the first element of its segment (``new_segment`` marks the starts)."""
    return np.maximum.accumulate(np.where(new_segment, np.arange(new_segment.size), 0))


def _changes(values: np.ndarray) -> np.ndarray:
    """True where an element differs from the one before it (and at the first element)."""
    out = np.ones(values.size, dtype=bool)
    out[1:] = values[1:] != values[:-1]
    return out


def _group_by_key(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(update-order indices grouped by key, each group in update order; True at each group's first element),
    keeping only the keys that occur at least twice (only those can give a hint).

    One value sort (fast; an index sort is several times slower) of codes = the key's high bits with the index
    in the low bits orders the elements by high bits, then by index. Keys that share their high bits (rare:
    about n^2 / 2^(65 - log2 n) pairs) are then put in key order inside their high-bit bucket."""
    n = keys.size
    bits = np.uint64(max(1, (n - 1).bit_length()))
    code = np.sort(((keys >> bits) << bits) | np.arange(n, dtype=np.uint64))
    order = (code & ((np.uint64(1) << bits) - np.uint64(1))).astype(np.int64)
    full, bucket = keys[order], code >> bits
    new_bucket = _changes(bucket)
    mixed = _changes(full) & ~new_bucket
    if mixed.any():
        segment = np.cumsum(new_bucket) - 1
        is_mixed = np.zeros(int(segment[-1]) + 1, dtype=bool)
        is_mixed[segment[mixed]] = True
        slots = np.flatnonzero(is_mixed[segment])
        resorted = np.lexsort((order[slots], full[slots], segment[slots]))
        order[slots], full[slots] = order[slots][resorted], full[slots][resorted]
    new_key = _changes(full)
    sizes = np.diff(np.append(np.flatnonzero(new_key), n))
    repeated = np.repeat(sizes >= 2, sizes)
    return order[repeated], new_key[repeated]


def _pair_counts(new_key: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The running count of (key, target) at each element, the element included (elements grouped by key, in
    update order): one value sort of (target, element) codes puts each pair's elements together, in order."""
    n = targets.size
    if int(targets.max()) >= np.iinfo(np.int64).max // n:
        raise ValueError("token ids too large to pack with element indices into int64")
    code = np.sort(targets * n + np.arange(n))
    target = code // n
    element = code - target * n
    group = np.cumsum(new_key) - 1
    new_pair = _changes(target) | _changes(group[element])
    counts = np.empty(n, dtype=np.int64)
    counts[element] = np.arange(n) - _segment_starts(new_pair) + 1
    return counts


def _offline_hints(keys: np.ndarray, targets: np.ndarray, step_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The online tables' lookups, all at once: per key (events in update order), the top count is the running
    maximum of the pair counts and the top token the target of the last event that raised it (a strict rise:
    the tie rule); a step's targets see the state after the key's last event of an earlier step."""
    hints, confidences = np.full(keys.size, -1, dtype=np.int64), np.zeros(keys.size, dtype=np.float64)
    by_key, new_key = _group_by_key(keys)
    n = by_key.size
    if n == 0:
        return hints, confidences
    y, steps = targets[by_key], step_ids[by_key]
    counts = _pair_counts(new_key, y)
    offset = (np.cumsum(new_key) - 1) * (n + 1)  # a segmented running max through one global one
    top_count = np.maximum.accumulate(counts + offset) - offset
    previous = np.concatenate([[0], top_count[:-1]])
    rises = top_count > np.where(new_key, 0, previous)  # always at a key's first event
    top_event = np.maximum.accumulate(np.where(rises, np.arange(n), 0))
    block_start, key_start = _segment_starts(new_key | _changes(steps)), _segment_starts(new_key)
    seen = block_start > key_start
    last = np.maximum(block_start - 1, 0)  # the key's last event before this step
    hints[by_key] = np.where(seen, y[top_event[last]], -1)
    confidences[by_key] = np.where(seen, top_count[last] / np.maximum(block_start - key_start, 1), 0.0)
    return hints, confidences


def precompute_hints(
    tokens: np.ndarray, steps: Steps, order: int, share: tuple[int, int] = (0, 1)
) -> tuple[np.ndarray, np.ndarray]:
    """Hint (int64) and confidence (float64) for every stream position (-1 / 0.0 where not scored or no hint),
    the tables following ``steps`` (scoring order; each step's lookups before its update). Vectorized; equal to
    :func:`online_hints`.

    ``share = (rank, world)``: only the positions whose context key is ``rank`` modulo ``world`` (-1 / 0.0
    elsewhere). A key's hints depend on that key's events alone, so the shares of all ranks put together (an
    elementwise max) are the whole; :func:`shared_hints` does that across the process group."""
    positions, doc_starts, step_ids = scoring_order(tokens, steps)
    if positions.size == 0:
        return _full_arrays(len(tokens), positions, positions, np.zeros(0))
    keys = context_keys(tokens, positions, doc_starts, order)
    rank, world = share
    mine = np.flatnonzero(keys % np.uint64(world) == rank) if world > 1 else slice(None)
    positions = positions[mine]
    hints, confidences = _offline_hints(keys[mine], tokens[positions].astype(np.int64), step_ids[mine])
    return _full_arrays(len(tokens), positions, hints, confidences)


def shared_hints(tokens: np.ndarray, steps: Steps, order: int, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """:func:`precompute_hints` of the whole stream, each rank of the process group computing one share of the
    context keys (at the validation set's 47.85M targets the table pass is 8 s of the 19 s on one CPU thread)
    and a max all-reduce of each of the two arrays putting them together; without a group, the whole pass here."""
    rank, world = group_rank_world()
    hint, confidence = precompute_hints(tokens, steps, order, share=(rank, world))
    if world == 1:
        return hint, confidence
    parts = [torch.from_numpy(a).to(device) for a in (hint, confidence)]
    for part in parts:  # -1 / 0.0 are the smallest values: every other rank's entry at a position is one of them
        all_reduce_max(part)
    return parts[0].cpu().numpy(), parts[1].cpu().numpy()


def tilt_boost(hint: np.ndarray, confidence: np.ndarray, threshold: float, boost: float) -> np.ndarray:
    """beta per position: ``boost`` where there is a hint with confidence >= ``threshold``, else 0.0."""
    return np.where((np.asarray(hint) >= 0) & (np.asarray(confidence) >= threshold), boost, 0.0)


def _log_z(log_p_hint: Tensor, beta: Tensor) -> Tensor:
    """log(1 + p(h) (e^beta - 1)) in float64; exactly 0 where beta = 0."""
    log_z = torch.log1p(torch.exp(log_p_hint) * torch.expm1(beta))
    return torch.where(beta == 0, torch.zeros_like(log_z), log_z)


def tilted_nats(nats: Tensor, log_p_hint: Tensor, target_is_hint: Tensor, beta: Tensor) -> Tensor:
    """The tilted loss l' = l - beta [y = h] + log(1 + p(h) (e^beta - 1)), float64 (any input float dtype);
    where beta = 0 it is l itself."""
    beta = beta.to(torch.float64)
    return nats.to(torch.float64) - beta * target_is_hint.to(torch.float64) + _log_z(log_p_hint.double(), beta)


def tilted_distribution(log_probs: Tensor, hint: Tensor, beta: Tensor) -> Tensor:
    """log p'(a) = log p(a) + beta [a = h] - log Z over the last dim, float64 (hint -1: untilted)."""
    log_probs = log_probs.to(torch.float64)
    beta = torch.where(hint >= 0, beta.to(torch.float64), 0.0).unsqueeze(-1)
    is_hint = torch.arange(log_probs.shape[-1], device=log_probs.device) == hint.unsqueeze(-1)
    log_p_hint = log_probs.gather(-1, hint.clamp(min=0).unsqueeze(-1))
    return log_probs + beta * is_hint - _log_z(log_p_hint, beta)


def tilted_scores(nats: Tensor, log_p_hint: Tensor, targets: Tensor, hint: Tensor, beta: Tensor) -> Tensor:
    """The tilted nats from what a scorer knows at a position: the model's nats of the target, log p(hint), the
    hint (-1 = none: untilted, whatever beta) and beta."""
    return tilted_nats(nats, log_p_hint, targets == hint, torch.where(hint >= 0, beta.to(torch.float64), 0.0))


def tilt_scorer(
    log_probs: Tensor, hint: Tensor, beta: Tensor, targets: Tensor, scores: Callable[..., Tensor] = tilted_scores
) -> Tensor:
    """The tilted nats of ``targets`` from full log-probs [..., V] through ``scores`` (default
    :func:`tilted_scores`; the reference scorer of the audit)."""
    nats = -log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    log_p_hint = log_probs.gather(-1, hint.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return scores(nats, log_p_hint, targets, hint, beta)


class NgramTilt:
    """One pass's n-gram tilt: every target's hint and confidence (precomputed from the scoring order, inside the
    timer), beta per position, the untilted running scores beside the tilted ones, and how many were tilted."""

    def __init__(self, val: ValData, steps: Steps, cfg: NgramTiltConfig, device: torch.device,
                 scorer: Callable[..., Tensor] = tilted_scores) -> None:  # fmt: skip
        """``scorer``: what the tilted nats come from; the stage's normalization audit scores every candidate target
        through the same default (:func:`pgolf.eval.ngram_audit.ngram_audits`)."""
        self.cfg, self.scorer = cfg, scorer
        self.hint, self.confidence = shared_hints(val.tokens, steps, cfg.order, device)
        self.beta = tilt_boost(self.hint, self.confidence, cfg.threshold, cfg.boost)
        self.untilted = Scores(device)
        self.tilted = self.hits = 0  # targets with beta > 0, and those whose target was the hint

    def hints_for(self, rows: Rows, device: torch.device) -> Tensor:
        return to_device(np.where(rows.mask, self.hint[rows.positions], -1), device)

    def score(self, nats: Tensor, log_p_hint: Tensor, rows: Rows, targets: Tensor, hints: Tensor) -> Tensor:
        """The tilted nats of a scored batch (the untilted ones go to :attr:`untilted`)."""
        beta = np.where(rows.mask, self.beta[rows.positions], 0.0)
        mask = to_device(rows.mask, nats.device)
        self.untilted.add(nats, rows, mask)
        self.tilted += int((beta > 0).sum())
        self.hits += int(((beta > 0) & (rows.targets == self.hint[rows.positions])).sum())
        return self.scorer(nats.detach(), log_p_hint.detach(), targets, hints, to_device(beta, nats.device))

    def summary(self, totals: BpbTotals, seconds: float) -> dict:
        """What metrics/eval.json says of the tilt (collective: the untilted totals are all-reduced)."""
        untilted = self.untilted.totals()
        return {"order": self.cfg.order, "threshold": self.cfg.threshold, "boost": self.cfg.boost,
                "untilted_val_bpb": untilted.val_bpb, "gain_bpb": totals.val_bpb - untilted.val_bpb,
                "tilted_targets": self.tilted, "tilted_fraction": self.tilted / max(untilted.tokens, 1),
                "hint_hits": self.hits, "hints_seconds": round(seconds, 3)}  # fmt: skip
