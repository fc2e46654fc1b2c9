"""The n-gram tilt inside LoRA TTT (eval.lora_ttt.ngram_tilt): it scores, the update learns from the untilted loss,
every audit passes, a deliberately leaky hint order fails the score-first audit, and no key turns on a
target-gated channel (the #1967 review)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError
from pgolf.eval import lora_ttt as ttt_lora
from pgolf.eval import ngram
from pgolf.eval.audit import bytes_audit, score_first_audit, text_bytes
from pgolf.eval.ngram import NgramTiltConfig
from pgolf.score.documents import split_documents
from pgolf.score.scores import TokenRecorder
from tests.test_eval_modes import BOS, VOCAB, eval_cfg, repetitive_texts, run, text_val, tiny_model

TILT = {"enabled": True, "order": 4, "threshold": 0.5, "boost": 2.625}


def tilt_cfg(**tilt):
    return eval_cfg(lora_ttt={"ngram_tilt": {**TILT, **tilt}})


@pytest.fixture(scope="module")
def texts():
    return repetitive_texts(5, 45, 5, seed=1)


@pytest.fixture(scope="module")
def tilted_run(texts):
    """One tilted LoRA TTT pass and its recorder (shared: a pass costs seconds)."""
    val = text_val(texts)
    recorder = TokenRecorder(len(val.tokens))
    return val, run("lora_ttt", tiny_model(), val, tilt_cfg(), recorder), recorder


def test_tilt_scores_while_the_update_learns_from_the_untilted_loss(texts, tilted_run):
    val, tilted, recorder = tilted_run
    plain = run("lora_ttt", tiny_model(), val, eval_cfg())
    stats = tilted.summary()["ngram_tilt"]
    # the untilted scores of the tilted pass are the plain pass's (the tilt never reaches the LoRA updates)
    assert stats["untilted_val_bpb"] == pytest.approx(plain.totals.val_bpb, rel=1e-9, abs=1e-9)
    assert stats["tilted_targets"] > 0 and stats["hint_hits"] > 0
    assert tilted.totals.val_bpb < stats["untilted_val_bpb"]  # repeated patterns: the hints are right
    assert stats["gain_bpb"] == pytest.approx(tilted.totals.val_bpb - stats["untilted_val_bpb"])
    assert (recorder.counts[1:] == 1).all() and tilted.totals.tokens == len(val.tokens) - 1
    assert bytes_audit(tilted.totals, text_bytes(texts)).passed
    assert "ngram_hints" in tilted.seconds  # inside the mode's timer


def test_boost_zero_scores_exactly_the_untilted_loss(texts):
    val = text_val(texts)
    result = run("lora_ttt", tiny_model(), val, tilt_cfg(boost=0.0))
    assert result.totals.val_bpb == result.summary()["ngram_tilt"]["untilted_val_bpb"]


def test_the_tilt_passes_the_score_first_audit_and_a_leaky_hint_order_fails_it(texts, monkeypatch):
    val, model, cfg = text_val(texts), tiny_model(), tilt_cfg()
    doc = split_documents(val.tokens, BOS)[2]

    def audit():
        return score_first_audit(lambda v, rec: run("lora_ttt", model, v, cfg, rec), val, doc, 20, VOCAB)

    honest = audit()
    assert honest.passed, honest.message
    # leaky: the tables follow the scoring order backwards, so early scores count pairs scored later
    real = ngram.precompute_hints
    monkeypatch.setattr(ngram, "precompute_hints", lambda tokens, steps, order: real(tokens, steps[::-1], order))
    leaky = audit()
    assert not leaky.passed and leaky.violations > 0


def test_scoring_steps_are_the_recorders_steps(tilted_run):
    """On one rank the hint order is exactly the order in which the mode scores (one step per Scores.add)."""
    (val, _, recorder), cfg = tilted_run, tilt_cfg()
    docs = split_documents(val.tokens, BOS)
    steps = ttt_lora.scoring_steps(ttt_lora.doc_queue(docs, cfg.lora_ttt.batch_docs), cfg.lora_ttt)
    assert len(steps) == recorder.step
    for k, (positions, starts) in enumerate(steps):
        assert set(positions.tolist()) == set(np.flatnonzero(recorder.steps == k).tolist())
        assert all(val.tokens[s] == BOS for s in starts)


def test_the_stage_audits_pass_for_the_tilt_and_fail_for_a_target_gated_scorer(texts, monkeypatch):
    from pgolf.eval import audit
    from tests.test_eval_modes import score_cfg

    val, model, cfg = text_val(texts), tiny_model(), tilt_cfg()
    checks = audit.ngram_audits(model, val, score_cfg(), cfg)
    assert all(c.passed for c in checks.values()), {k: c.message for k, c in checks.items()}

    def gated(nats, log_p_hint, targets, hints, beta):  # #1967: tilt only where the target is the hint
        beta = torch.where(targets == hints, beta, 0.0)
        return ngram.tilted_nats(nats, log_p_hint, targets == hints, beta)

    assert not audit.ngram_audits(model, val, score_cfg(), cfg, scorer=gated)["ngram_normalization"].passed


def test_no_key_turns_on_a_target_gated_channel():
    assert set(NgramTiltConfig.model_fields) == {"enabled", "order", "threshold", "boost"}
    for channel in ("within_boost", "word_boost", "agree_add_boost", "within_tau", "word_tau"):
        with pytest.raises(ConfigError, match=rf"eval.lora_ttt.ngram_tilt.{channel}: unknown key"):
            tilt_cfg(**{channel: 1.0})
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.ngram_tilt.threshold"):
        tilt_cfg(threshold=1.5)
