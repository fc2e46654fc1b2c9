"""pgolf.eval.audit: the score-first audit passes for the compliant modes and fails for #1802's multi-phase,
the stage's audit says what it runs, measured compliance, and the n-gram tilt's causality and normalization
audits (passing for the real tilt, failing for leaky or target-gated variants built here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.eval import ngram, ngram_audit
from pgolf.eval.audit import COMPLIANT, UNAUDITED, VIOLATED, compliance_status, score_first_audit
from pgolf.score.documents import split_documents
from tests.eval.ngram_oracle import TokenNgram
from tests.helpers.config import eval_cfg, score_cfg
from tests.helpers.eval import BOS, VOCAB, random_steps, random_texts, run, text_val, tilt_case, tilt_cfg, tiny_model


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase"])
def test_score_first_audit_passes_for_compliant_modes_and_fails_for_multi_phase(name):
    val = text_val(random_texts(8, 20, 45, seed=3))
    model, cfg = tiny_model(), eval_cfg()
    doc = split_documents(val.tokens, BOS)[2]
    cut = 2 * cfg.lora_ttt.chunk_size  # the end of chunk 1

    def run_on(v, recorder):
        return run(name, model, v, cfg, recorder)

    audit = score_first_audit(run_on, val, doc, cut, VOCAB)
    assert audit.checked >= cut
    assert audit.passed == (name != "multi_phase"), audit.message


@pytest.mark.usefixtures("one_thread")
def test_the_stage_audit_says_what_it_runs(capsys):
    """The evaluate stage's score-first audit prints a line before and after each of its two runs and its verdict
    (issue 15: it ran for minutes without output)."""
    from pgolf.eval.audit import score_first

    val = text_val(random_texts(4, 20, 45, seed=3))
    detail = score_first("chunk_sgd", tiny_model(), val, score_cfg(), eval_cfg(progress=True), True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "score-first audit of chunk_sgd" in line]
    assert len(lines) == 5 and "original run on 2 documents" in lines[0] and "perturbed run" in lines[2]
    assert lines[-1].endswith(f"passed ({detail['checked']} protected scores, 0 changed)")


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(
    ("audits", "passes", "status"),
    [
        ({"bytes": True}, 1, COMPLIANT),
        ({"bytes": True, "score_first": True}, 1, COMPLIANT),
        ({"bytes": None}, 1, UNAUDITED),  # no val text: the byte total could not be checked
        ({"bytes": True, "score_first": None}, 1, UNAUDITED),  # eval.audit.score_first: false
        ({"bytes": True, "score_first": False}, 1, VIOLATED),
        ({"bytes": False, "score_first": True}, 1, VIOLATED),
        ({"bytes": False, "score_first": None}, 1, VIOLATED),  # a failure outranks a skip
        ({"bytes": True, "score_first": True}, 3, VIOLATED),  # re-scored targets: never compliant
        ({}, 1, UNAUDITED),
    ],
)
def test_compliance_is_measured(audits, passes, status):
    assert compliance_status(audits, passes) == status


# ---- the n-gram tilt ----


def update_before_lookup(tokens: np.ndarray, steps: list, order: int):
    """Leaky: each step's pairs are added before its own lookups (a target sees its own token)."""
    positions, doc_starts, step_ids = ngram.scoring_order(tokens, steps)
    keys, table = ngram.context_keys(tokens, positions, doc_starts, order), TokenNgram(order)
    hint, conf = np.full(len(tokens), -1), np.zeros(len(tokens))
    for s in range(len(steps)):
        rows = step_ids == s
        table.update(keys[rows], tokens[positions[rows]])
        hint[positions[rows]], conf[positions[rows]] = table.lookup(keys[rows])
    return hint, conf


def stream_order(tokens: np.ndarray, steps: list, order: int):
    """Leaky: the frontier's stream-order pass (every target its own step, left to right over the stream), which
    counts documents that TTT scores later."""
    positions, doc_starts, _ = ngram.scoring_order(tokens, steps)
    by_stream = np.argsort(positions)
    singles = zip(positions[by_stream], doc_starts[by_stream], strict=True)
    return ngram.precompute_hints(tokens, [(p[None], d[None]) for p, d in singles], order)


@pytest.mark.parametrize("seed", [0, 1])
def test_causality_audit_passes_for_scoring_order_hints_and_fails_for_leaky_ones(seed):
    tokens, steps = random_steps(seed)
    result = ngram_audit.causality_audit(tokens, steps, 3, seed=seed)
    assert result.passed and result.checked > 0, result.message
    for leaky in (update_before_lookup, stream_order):
        result = ngram_audit.causality_audit(tokens, steps, 3, seed=seed, hints=leaky)
        assert not result.passed and result.violations > 0, leaky.__name__


def target_gated(log_probs, hint, beta, targets):
    """Illegal: the tilt only where the realized target is the hint (no normalizer elsewhere)."""
    return torch.where(targets == hint, ngram.tilt_scorer(log_probs, hint, beta, targets),
                       -log_probs.gather(-1, targets[:, None])[:, 0].double())  # fmt: skip


def boundary_gated(log_probs, hint, beta, targets):
    """Illegal (#1967's word experts): the tilt gated by a LUT of the realized target."""
    lut = torch.arange(log_probs.shape[-1]) % 2 == 0
    return ngram.tilt_scorer(log_probs, hint, torch.where(lut[targets], beta, 0.0), targets)


def neighbour_gated(log_probs, hint, beta, targets):
    """Illegal: the tilt of a row depends on another row's target (normalized, but not causal)."""
    return ngram.tilt_scorer(log_probs, hint, torch.where(targets == targets.roll(1), beta, 0.0), targets)


def test_normalization_audit_passes_for_the_tilt_and_fails_for_target_gated_scorers():
    log_probs, hint, _ = tilt_case(rows=16, vocab=11, dtype=torch.float32)
    conf = torch.linspace(0.5, 1.0, 16)
    beta = torch.from_numpy(ngram.tilt_boost(hint.numpy(), conf.numpy(), 0.8, 2.625))
    result = ngram_audit.normalization_audit(log_probs, hint, beta)
    assert result.passed and result.checked == 16, result.message  # float32 log-probs: mass within ~1e-7
    expected = {target_gated: "C2", boundary_gated: "C2", neighbour_gated: "other targets"}
    for scorer, reason in expected.items():
        result = ngram_audit.normalization_audit(log_probs, hint, beta, scorer)
        assert not result.passed and reason in result.message, scorer.__name__


def test_the_stage_audits_pass_for_the_tilt_and_fail_for_a_target_gated_scorer(texts, monkeypatch):

    val, model, cfg = text_val(texts), tiny_model(), tilt_cfg()
    checks = ngram_audit.ngram_audits(model, val, score_cfg(), cfg)
    assert all(c.passed for c in checks.values()), {k: c.message for k, c in checks.items()}

    def gated(nats, log_p_hint, targets, hints, beta):  # #1967: tilt only where the target is the hint
        beta = torch.where(targets == hints, beta, 0.0)
        return ngram.tilted_nats(nats, log_p_hint, targets == hints, beta)

    assert not ngram_audit.ngram_audits(model, val, score_cfg(), cfg, scorer=gated)["ngram_normalization"].passed
