"""Audits of an evaluation mode: the byte total, and score-before-update by perturbation.

* Bytes audit: the scored byte total must equal the UTF-8 byte count of the scored documents' original text
  (e.g. from ``data/docs/val.jsonl``; :func:`text_bytes`). A mismatch means a wrong byte counter (LUT on CaseOps),
  input-indexed bytes, double counting or dropped targets.
* Score-first audit: run the mode, then replace the tokens of one document after position ``cut`` (document
  offset; the end-of-document BOS is kept) with random ids and run it again. Protected targets must score the same
  (within ``atol``): the document's own targets at offsets <= ``cut`` (their inputs did not change), and every
  target the first run scored at a step before the first perturbed target was scored (nothing may depend on
  tokens that are not yet scored). A compliant mode passes; #1802's multi-phase TTT, whose reported scores come
  from a model trained on later tokens, fails.

References: Issue #1017's conditions; the record's own legality argument for phased TTT.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pgolf.data.docs import read_docs
from pgolf.dist import active, all_max, all_reduce_sum, dist_info
from pgolf.eval.config import EvalConfig
from pgolf.eval.modes import context, run_mode
from pgolf.model.gpt import GPT
from pgolf.score.bpb import BpbTotals, ValData
from pgolf.score.documents import Document
from pgolf.score.scorer import ScoreConfig, scored_documents
from pgolf.score.scores import EvalContext, ModeResult, TokenRecorder


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
    ``cut`` in ``doc``; the protected targets (:func:`protected_positions`) must keep their scores.

    Under torchrun the mode spreads the documents over the ranks and each rank records its own scores (and its own
    scoring steps): the rank that scored ``doc`` checks it and the targets it scored before it; the counts are
    summed and the largest change taken over the ranks, so every rank returns the same result."""
    before, after = TokenRecorder(len(val.tokens)), TokenRecorder(len(val.tokens))
    result = run(val, before)
    run(perturb_document(val, doc, cut, vocab_size, seed), after)
    scored_here = bool((before.counts[doc.start + 1 : doc.end] > 0).any())
    positions = protected_positions(before, doc, cut) if scored_here else np.zeros(0, dtype=np.int64)
    if scored_here and (positions.size == 0 or np.isnan(before.nats[positions]).any()):
        raise ValueError("the audited mode did not score the protected targets of the document it scored")
    diff = np.abs(before.nats[positions] - after.nats[positions])
    bad = positions[diff > atol]
    checked, violations, worst = _over_ranks(positions.size, bad.size, float(diff.max(initial=0.0)))
    if checked == 0:
        raise ValueError("the audited mode did not score the protected targets (is the document among the scored?)")
    message = "ok" if violations == 0 else f"{violations} scores changed" + (
        f", first at stream position {int(bad[0])}" if bad.size else " (on another rank)")  # fmt: skip
    return AuditResult(f"score_first/{result.name}", violations == 0, checked, violations, worst, message)


def _over_ranks(checked: int, violations: int, worst: float) -> tuple[int, int, float]:
    """(checked, violations) summed and ``worst`` maxed over the ranks; as given without a process group."""
    if not active():
        return checked, violations, worst
    device = dist_info().device
    counts = torch.tensor([checked, violations], dtype=torch.float64, device=device)
    all_reduce_sum([counts])
    return int(counts[0].item()), int(counts[1].item()), all_max(worst, device)


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


# ---------------------------------------------------------------- the audits of one evaluate run


def expected_bytes(docs_dir: Path, count: int) -> int | None:
    """UTF-8 bytes of the first ``count`` val documents' text, or None when the source has no text."""
    if not (docs_dir / "val.jsonl").is_file():
        return None
    texts = []
    for doc in read_docs(docs_dir, "val"):
        if len(texts) == count:
            break
        texts.append(doc.text)
    return text_bytes(texts)


def _say(ctx: EvalContext, line: str) -> None:
    """One progress line on rank 0 (through tqdm, so it does not break a bar), when ``eval.progress`` is on."""
    if ctx.progress and ctx.rank == 0:
        tqdm.write(line)


def score_first(name: str, model: GPT, val: ValData, score: ScoreConfig, cfg: EvalConfig, looped: bool) -> dict:
    """The score-first audit of one mode on the first ``cfg.audit.docs`` documents, cut in the middle of the
    longest of them. Eager: so few documents make batches of their own shapes, each a graph to compile, and the
    compiled forward scores like the eager one (tests/score/test_compile.py)."""
    small = score.model_copy(update={"docs": cfg.audit.docs})
    docs = scored_documents(val, small, model.cfg.bos_id)
    doc = max(docs, key=lambda d: d.num_targets)
    ctx = dataclasses.replace(context(model, cfg, looped), compile_backend=None)
    runs = iter(("original", "perturbed"))

    def run(v: ValData, recorder: TokenRecorder) -> ModeResult:
        label, start = next(runs), time.perf_counter()
        _say(ctx, f"evaluate: score-first audit of {name}: the {label} run on {len(docs)} documents ...")
        result = run_mode(name, model, v, docs, small, cfg, dataclasses.replace(ctx, recorder=recorder))
        _say(ctx, f"evaluate: score-first audit of {name}: the {label} run took {time.perf_counter() - start:.1f} s")
        return result

    result = score_first_audit(run, val, doc, doc.num_targets // 2, model.cfg.vocab_size)
    _say(ctx, f"evaluate: score-first audit of {name}: {'passed' if result.passed else 'FAILED'} "
              f"({result.checked} protected scores, {result.violations} changed)")  # fmt: skip
    return {"passed": result.passed, "checked": result.checked, "violations": result.violations,
            "max_abs_diff": result.max_abs_diff}  # fmt: skip
