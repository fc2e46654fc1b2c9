"""The n-gram tilt's own audits (LoRA TTT with ``eval.lora_ttt.ngram_tilt``): causality of the hints, and the
normalization of the tilted scores (C1/C2 of Issue #1017). Imported by the evaluate stage only when the tilt is on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from pgolf.eval.audit import AuditResult
from pgolf.eval.config import EvalConfig
from pgolf.eval.lora_ttt import doc_queue, scoring_steps
from pgolf.eval.ngram import Steps, precompute_hints, scoring_order, tilt_boost, tilt_scorer, tilted_distribution
from pgolf.eval.ngram import tilted_scores as mode_tilt_scores
from pgolf.model.gpt import GPT
from pgolf.score.bpb import ValData
from pgolf.score.scorer import ScoreConfig, scored_documents


def _perturbed(tokens: np.ndarray, position: int, bos: int, rng: np.random.Generator) -> np.ndarray:
    """A copy with the token at ``position`` replaced by another id that is not BOS."""
    choices = np.setdiff1d(np.arange(int(tokens.max()) + 2), [int(tokens[position]), bos])
    out = np.array(tokens, copy=True)
    out[position] = rng.choice(choices)
    return out


def causality_audit(
    tokens: np.ndarray,
    steps: Steps,
    order: int,
    *,
    seed: int = 0,
    trials: int = 3,
    hints: Callable[..., tuple[np.ndarray, np.ndarray]] = precompute_hints,
) -> AuditResult:
    """Change the token at ``trials`` random scored positions t (one at a time, never a BOS) and recompute the
    hints with ``hints``: those of every target scored at a step <= step(t), and of t's own document's targets at
    positions <= t, must stay the same (hint equal, confidence bit-equal). Exempt are t's own document's targets
    after t: t is in their context (C1 allows it), so their keys change."""
    positions, doc_starts, step_ids = scoring_order(tokens, steps)
    step_of, doc_of = np.full(len(tokens), -1), np.full(len(tokens), -1)
    step_of[positions], doc_of[positions] = step_ids, doc_starts
    candidates = positions[tokens[positions] != tokens[doc_starts]]
    if candidates.size == 0:
        raise ValueError("no scored non-BOS token to perturb")
    rng = np.random.default_rng(seed)
    base_hint, base_conf = hints(tokens, steps, order)
    checked = violations = 0
    worst, first_bad = 0.0, None
    for t in rng.choice(candidates, size=min(trials, candidates.size), replace=False).tolist():
        hint, conf = hints(_perturbed(tokens, t, int(tokens[doc_of[t]]), rng), steps, order)
        own, after = doc_of == doc_of[t], np.arange(len(tokens)) > t
        earlier = (step_of >= 0) & (step_of <= step_of[t])
        protected = np.flatnonzero((earlier & ~(own & after)) | (own & ~after))
        diff = np.abs(conf[protected] - base_conf[protected])
        bad = protected[(hint[protected] != base_hint[protected]) | (diff > 0)]
        checked, violations, worst = checked + protected.size, violations + bad.size, max(worst, float(diff.max()))
        if bad.size and first_bad is None:
            first_bad = (t, int(bad[0]))
    message = "ok"
    if first_bad is not None:
        message = f"{violations} hints changed; changing the token at {first_bad[0]} moved the hint at {first_bad[1]}"
    return AuditResult("ngram_causality", violations == 0, checked, violations, worst, message)


def _candidate_nats(
    scorer: Callable[..., Tensor], log_probs: Tensor, hint: Tensor, beta: Tensor, offsets: Tensor
) -> Tensor:
    """[N, V] nats of every candidate, row i scoring candidate (a + offsets[i]) mod V in the a-th call."""
    num_rows, vocab = log_probs.shape
    rows = torch.arange(num_rows, device=log_probs.device)
    nats = torch.empty(num_rows, vocab, dtype=torch.float64, device=log_probs.device)
    for a in range(vocab):
        targets = (a + offsets) % vocab
        nats[rows, targets] = scorer(log_probs, hint, beta, targets).to(torch.float64)
    return nats


def normalization_audit(
    log_probs: Tensor,
    hint: Tensor,
    beta: Tensor,
    scorer: Callable[..., Tensor] = tilt_scorer,
    *,
    atol: float = 1e-6,
    seed: int = 0,
) -> AuditResult:
    """Score every candidate target of N positions ([N, V] log-probs, [N] hints and betas) through ``scorer``, the
    mode's own scoring function, and check per position: sum_a exp(-nats(a)) = 1 (C2); the implied distribution
    is the target-free tilt :func:`tilted_distribution`, and it is the same when the other positions' targets
    change (C1: the score must not depend on which target is realized, here or elsewhere). Tolerance ``atol``."""
    hint, beta = hint.to(log_probs.device), beta.to(log_probs.device)
    num_rows, vocab = log_probs.shape
    same = _candidate_nats(scorer, log_probs, hint, beta, torch.zeros_like(hint, dtype=torch.long))
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.randint(0, vocab, (num_rows,), generator=generator).to(log_probs.device)
    mixed = _candidate_nats(scorer, log_probs, hint, beta, offsets)
    probs = torch.exp(-same)
    mass_err = (probs.sum(-1) - 1).abs()
    tilt_err = (probs - tilted_distribution(log_probs, hint, beta).exp()).abs().amax(-1)
    mixed_err = (same - mixed).abs().amax(-1)
    failures = {  # written as ~(err <= atol) so that NaN fails
        "mass != 1 (C2)": ~(mass_err <= atol),
        "not the target-free tilt (C1)": ~(tilt_err <= atol),
        "depends on other targets (C1)": ~(mixed_err <= atol),
    }
    bad = torch.stack(list(failures.values())).any(0)
    worst = float(torch.stack([mass_err, tilt_err, mixed_err]).nan_to_num(nan=math.inf).max())
    found = [f"{name} at {int(rows.sum())} positions" for name, rows in failures.items() if rows.any()]
    return AuditResult("ngram_normalization", not found, num_rows, int(bad.sum()), worst, "; ".join(found) or "ok")


def ngram_audits(
    model: GPT, val: ValData, score: ScoreConfig, cfg: EvalConfig, scorer: Callable[..., Tensor] = mode_tilt_scores
) -> dict[str, AuditResult]:
    """The n-gram tilt's own audits on the first ``cfg.audit.docs`` documents, in LoRA TTT's scoring order:
    causality (a changed token moves no hint of a target scored at the same or an earlier step,
    :func:`causality_audit`) and normalization (every candidate target scored through ``scorer``, the mode's own
    tilt scorer by default: a full distribution that does not depend on the realized target, C1/C2), on random
    model log-probabilities at the positions the tilt boosts."""
    ttt, tilt = cfg.lora_ttt, cfg.lora_ttt.ngram_tilt
    docs = scored_documents(val, score.model_copy(update={"docs": cfg.audit.docs}), model.cfg.bos_id)
    steps = scoring_steps(doc_queue(docs, ttt.batch_docs), ttt)
    causal = causality_audit(val.tokens, steps, tilt.order)
    hint, confidence = precompute_hints(val.tokens, steps, tilt.order)
    beta = tilt_boost(hint, confidence, tilt.threshold, tilt.boost)
    rows = np.flatnonzero(beta > 0)[:8]
    if rows.size == 0:  # nothing boosted on so few documents: check the untilted positions' scorer all the same
        rows = np.flatnonzero(hint >= 0)[:8] if (hint >= 0).any() else np.arange(1, min(9, len(val.tokens)))
    log_probs = torch.randn(rows.size, model.cfg.vocab_size, generator=torch.Generator().manual_seed(0))

    def mode_scorer(log_probs: Tensor, hint: Tensor, beta: Tensor, targets: Tensor) -> Tensor:
        return tilt_scorer(log_probs, hint, beta, targets, scores=scorer)

    norm = normalization_audit(log_probs.log_softmax(-1).double(), torch.from_numpy(hint[rows]),
                               torch.from_numpy(beta[rows]), mode_scorer)  # fmt: skip
    return {"ngram_causality": causal, "ngram_normalization": norm}
