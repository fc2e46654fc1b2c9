"""Audits of an evaluation mode: the byte total, and score-before-update by perturbation.

* Bytes audit: the scored byte total must equal the UTF-8 byte count of the scored documents' original text
  (e.g. from ``data/docs/val.jsonl``; :func:`text_bytes`). A mismatch means a wrong byte counter (LUT on CaseOps,
  B9.2), input-indexed bytes (B9.3), double counting or dropped targets (B9.4).
* Score-first audit: run the mode, then replace the tokens of one document after position ``cut`` (document
  offset; the end-of-document BOS is kept) with random ids and run it again. Protected targets must score the same
  (within ``atol``): the document's own targets at offsets <= ``cut`` (their inputs did not change), and every
  target the first run scored at a step before the first perturbed target was scored (nothing may depend on
  tokens that are not yet scored). A compliant mode passes; #1802's multi-phase TTT, whose reported scores come
  from a model trained on later tokens, fails.

References: spec record-eval-data.md A6.11 (legality argument), other-seeds.md §4.4; Issue #1017's conditions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from pgolf.eval.bpb import BpbTotals, ValData
from pgolf.eval.common import ModeResult, TokenRecorder
from pgolf.eval.documents import Document


@dataclass(frozen=True)
class AuditResult:
    """Whether an audit passed, what it checked and, if not, where it failed."""

    name: str
    passed: bool
    checked: int
    violations: int
    max_abs_diff: float
    message: str


def text_bytes(texts: Iterable[str]) -> int:
    """The UTF-8 byte count of some documents' original text (what the scored bytes must add up to)."""
    return sum(len(text.encode("utf-8")) for text in texts)


def bytes_audit(totals: BpbTotals, expected_bytes: int, name: str = "bytes") -> AuditResult:
    """The scored byte total against the scored documents' UTF-8 byte count."""
    diff = totals.bytes - expected_bytes
    message = "ok" if diff == 0 else f"scored {totals.bytes} bytes, the documents have {expected_bytes} ({diff:+d})"
    return AuditResult(name, diff == 0, 1, int(diff != 0), float(abs(diff)), message)


def perturb_document(val: ValData, doc: Document, cut: int, vocab_size: int, seed: int = 0) -> ValData:
    """A copy of ``val`` whose document tokens after offset ``cut`` (up to, not including, the end-of-document
    token) are random ids that are not BOS (so the document structure is unchanged)."""
    tokens = np.array(val.tokens, copy=True)
    lo, hi = doc.start + cut + 1, doc.end - 1
    if cut <= 0 or lo >= hi:
        raise ValueError(f"cut {cut} leaves nothing to perturb in a document of {doc.num_targets} targets")
    bos = int(val.tokens[doc.start])
    ids = np.random.default_rng(seed).integers(0, vocab_size - 1, size=hi - lo)
    tokens[lo:hi] = np.where(ids >= bos, ids + 1, ids)  # skips the BOS id
    return ValData(tokens.astype(val.tokens.dtype), val.target_bytes, val.byte_count)


def protected_positions(before: TokenRecorder, doc: Document, cut: int) -> np.ndarray:
    """Stream positions whose scores must not change when the document's tokens after ``cut`` change."""
    perturbed = np.arange(doc.start + cut + 1, doc.end - 1)
    first_step = int(before.steps[perturbed].min())
    own = np.arange(doc.start + 1, doc.start + cut + 1)
    earlier = np.flatnonzero((before.steps >= 0) & (before.steps < first_step))
    return np.union1d(own, earlier)


def score_first_audit(
    run: Callable[[ValData, TokenRecorder], ModeResult],
    val: ValData,
    doc: Document,
    cut: int,
    vocab_size: int,
    *,
    atol: float = 1e-6,
    seed: int = 0,
) -> AuditResult:
    """Run a mode (``run(val, recorder)`` on a fresh model each call) on ``val`` and on a copy perturbed after
    ``cut`` in ``doc``; the protected targets (:func:`protected_positions`) must keep their scores."""
    before, after = TokenRecorder(len(val.tokens)), TokenRecorder(len(val.tokens))
    result = run(val, before)
    run(perturb_document(val, doc, cut, vocab_size, seed), after)
    positions = protected_positions(before, doc, cut)
    if positions.size == 0 or np.isnan(before.nats[positions]).any():
        raise ValueError("the audited mode did not score the protected targets (is the document among the scored?)")
    diff = np.abs(before.nats[positions] - after.nats[positions])
    bad = positions[diff > atol]
    message = "ok" if bad.size == 0 else f"{bad.size} scores changed, first at stream position {int(bad[0])}"
    return AuditResult(f"score_first/{result.name}", bad.size == 0, int(positions.size), int(bad.size),
                       float(diff.max()), message)  # fmt: skip


COMPLIANT, UNAUDITED, VIOLATED = "compliant", "unaudited", "violated"


def compliance_status(audits: dict[str, bool | None], passes: int = 1) -> str:
    """A mode's measured standing: ``violated`` when an audit failed or the mode scored its targets more than once
    (it re-scores trained tokens), ``unaudited`` when an audit that applies to it did not run (None), else
    ``compliant``. Nothing is declared: a mode is compliant only when every audit ran and passed."""
    if passes > 1 or any(passed is False for passed in audits.values()):
        return VIOLATED
    if not audits or any(passed is None for passed in audits.values()):
        return UNAUDITED
    return COMPLIANT
