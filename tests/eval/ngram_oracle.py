"""The n-gram tilt's reference: online count tables (plain dicts, one pair at a time) and the hint pass built on
them, the semantics :func:`pgolf.eval.ngram.precompute_hints` vectorizes. Test-only: the tests compare the two on
random streams, and ``bench/ngram_hints.py`` times both."""

from __future__ import annotations

import numpy as np

from pgolf.eval.ngram import Steps, _full_arrays, context_keys, scoring_order


class TokenNgram:
    """The online tables (dicts; the reference semantics). ``lookup`` never changes them, ``update`` adds pairs."""

    def __init__(self, order: int) -> None:
        self.order = order
        self._contexts: dict[int, list[int]] = {}  # key -> [total, top token, top count]
        self._pairs: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._contexts)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hint int64, -1 where the key is unseen; confidence float64 = top count / total, 0 where unseen)."""
        hints, confidences = [], []
        get = self._contexts.get
        for key in np.asarray(keys, dtype=np.uint64).tolist():
            state = get(key)
            hints.append(-1 if state is None else state[1])
            confidences.append(0.0 if state is None else state[2] / state[0])
        return np.array(hints, dtype=np.int64), np.array(confidences, dtype=np.float64)

    def update(self, keys: np.ndarray, targets: np.ndarray) -> None:
        """Add the pairs (key, target) one by one, in the given order (the order decides ties)."""
        contexts, pairs = self._contexts, self._pairs
        keys = np.asarray(keys, dtype=np.uint64).tolist()
        for key, target in zip(keys, np.asarray(targets, dtype=np.int64).tolist(), strict=True):
            count = pairs.get((key, target), 0) + 1
            pairs[(key, target)] = count
            state = contexts.get(key)
            if state is None:
                contexts[key] = [1, target, count]
                continue
            state[0] += 1
            if count > state[2]:
                state[1], state[2] = target, count


def online_hints(tokens: np.ndarray, steps: Steps, order: int) -> tuple[np.ndarray, np.ndarray]:
    """:func:`precompute_hints` by the online loop: per step, look up all its targets, then add their pairs."""
    positions, doc_starts, step_ids = scoring_order(tokens, steps)
    keys = context_keys(tokens, positions, doc_starts, order)
    targets = tokens[positions].astype(np.int64)
    hints, confidences = np.full(positions.size, -1, dtype=np.int64), np.zeros(positions.size)
    table = TokenNgram(order)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(step_ids, minlength=len(steps)))]).astype(np.int64)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        hints[lo:hi], confidences[lo:hi] = table.lookup(keys[lo:hi])
        table.update(keys[lo:hi], targets[lo:hi])
    return _full_arrays(len(tokens), positions, hints, confidences)
