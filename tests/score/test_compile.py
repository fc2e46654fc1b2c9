"""pgolf.score.compile, the compiled scoring/TTT forward (``eval.compile``) on CPU with ``aot_eager``: one graph of
dynamic shape, warmed up at the largest and smallest call of the configuration, serves every call, padding changes
no score, the compiled modes score like the eager ones with at most two graphs each and nothing built while
scoring (a missed shape is reported), and the knob only compiles on CUDA."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from pgolf import compiler as tc
from pgolf.eval.chunk_sgd import evaluate_chunk_sgd
from pgolf.eval.lora_ttt import evaluate_lora_ttt
from pgolf.eval.modes import context, run_mode
from pgolf.eval.sliding import evaluate_sliding
from pgolf.score import compile as ec
from pgolf.score import scorer as score
from pgolf.score.documents import split_documents
from pgolf.score.scorer import score_model
from pgolf.score.scores import EvalContext, TokenRecorder
from tests.helpers.config import eval_cfg, score_cfg
from tests.helpers.eval import BOS, text_val, texts_of, tiny_model, wide_cfg

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_dynamo")


BACKEND = "aot_eager"


def run(name, model, val, docs, cfg, backend, recorder=None):
    """One mode called directly with a compile backend (the stage compiles on CUDA only), looped, on ``model``
    itself; ``plain`` is the one scorer with the sliding mode's window and batch."""
    ctx = EvalContext(True, recorder=recorder, compile_backend=backend)
    if name == "plain":
        score = score_cfg(docs=0, seq_len=cfg.sliding.seq_len, batch_windows=cfg.sliding.batch_windows)
        return score_model(model, val, docs, score, ctx)
    if name == "sliding":
        return evaluate_sliding(model, val, docs, cfg.sliding, ctx)
    if name == "lora_ttt":
        return evaluate_lora_ttt(model, val, docs, cfg.lora_ttt, ctx=ctx)
    return evaluate_chunk_sgd(model, val, docs, cfg.chunk_sgd, ctx=ctx)


def test_a_compiled_call_is_padded_to_the_sizes_a_dynamic_graph_keeps_symbolic():
    """Eager: a batch runs as it is. Compiled: at least MIN_WIDTH wide, MIN_SCORED scored positions and (a fixed
    model) two rows, since a size of one specializes a dynamic graph; never wider than the widest row."""
    eager = ec.EvalForward(tiny_model(), True, None, max_width=64)
    fixed = ec.EvalForward(tiny_model(), True, BACKEND, max_width=64)
    lora = ec.EvalForward(tiny_model(), True, BACKEND, max_width=64, min_rows=0)
    assert eager.shape(1, 3, 1) == (1, 3, 1)
    assert fixed.shape(1, 3, 1) == (2, ec.MIN_WIDTH, ec.MIN_SCORED) and fixed.shape(5, 40, 7) == (5, 40, 7)
    assert lora.shape(1, 3, 1) == (1, ec.MIN_WIDTH, ec.MIN_SCORED)
    with pytest.raises(ValueError, match="wider than the widest row"):
        fixed.shape(2, 65, 1)


class EagerRecorder:
    """Stands in for the compiled model: records (rows, width, scored) of every call, runs the model eagerly."""

    calls: list[tuple[int, int, int]] = []

    def __init__(self, model, backend, dynamic=False):
        self.model, self.fullgraph = model, True

    def __call__(self, ids, targets, **kw):
        EagerRecorder.calls.append((*ids.shape, kw["positions"].shape[1]))
        return self.model(ids, targets, **kw)


@pytest.mark.parametrize("name", ["plain", "sliding", "lora_ttt", "chunk_sgd"])
def test_padded_calls_stay_within_the_warmed_bounds_and_change_no_score(name, monkeypatch):
    """Documents of 2 to 300 tokens, windows up to 160: the warm-up runs the largest and the smallest call from the
    configuration; every scoring call lies between them (one dynamic graph serves it), and the padded calls score
    every target as the eager, unpadded ones."""
    val = text_val(texts_of([300, 149, 3, 139, 119, 109, 99, 99, 89, 79, 69, 59, 49, 2]))
    docs, cfg = split_documents(val.tokens, BOS), wide_cfg(160)
    eager, padded = TokenRecorder(len(val.tokens)), TokenRecorder(len(val.tokens))
    want = run(name, tiny_model(), val, docs, cfg, None, eager)
    monkeypatch.setattr(tc, "CompiledModel", EagerRecorder)
    EagerRecorder.calls = []
    got = run(name, tiny_model(), val, docs, cfg, BACKEND, padded)
    warmed, scored = EagerRecorder.calls[: got.compile["shapes"]], EagerRecorder.calls[got.compile["shapes"] :]
    big, small = warmed[0], warmed[1]
    assert all(lo <= x <= hi for call in scored for lo, x, hi in zip(small, call, big, strict=True)), (warmed, scored)
    assert len({w for _, w, _ in scored}) >= 3  # the widths vary: one graph serves them all
    assert np.array_equal(padded.counts, eager.counts) and eager.counts[1:].min() >= 1
    np.testing.assert_allclose(padded.nats[1:], eager.nats[1:], rtol=2e-6, atol=1e-7)
    assert (got.totals.tokens, got.totals.bytes) == (want.totals.tokens, want.totals.bytes)
    assert got.totals.val_bpb == pytest.approx(want.totals.val_bpb, rel=1e-6)


def compile_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "torch.compile" in str(w.message)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["plain", "sliding", "lora_ttt", "chunk_sgd"])
def test_compiled_mode_scores_like_eager_and_builds_no_graph_while_scoring(name):
    val = text_val(texts_of([150, 40, 95, 10, 70, 120, 5, 60]))  # LoRA batches of 3, 3 and 2 documents
    docs, cfg = split_documents(val.tokens, BOS), wide_cfg(96)
    eager, compiled = TokenRecorder(len(val.tokens)), TokenRecorder(len(val.tokens))
    want = run(name, tiny_model(), val, docs, cfg, None, eager)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = run(name, tiny_model(), val, docs, cfg, BACKEND, compiled)
    assert not compile_warnings(caught)  # one full graph per shape, none built after the warm-up
    stats = got.compile
    assert stats["graphs_scoring"] == 0 and stats["fullgraph"] and 1 <= stats["graphs_warmup"] <= 2
    assert want.compile["enabled"] is False and stats["enabled"] and "warmup" not in got.seconds
    np.testing.assert_allclose(compiled.nats[1:], eager.nats[1:], rtol=2e-6, atol=1e-7)
    assert got.totals.val_bpb == pytest.approx(want.totals.val_bpb, rel=1e-6)


@pytest.mark.slow
def test_a_shape_the_warm_up_missed_is_compiled_while_scoring_and_reported(monkeypatch):
    val = text_val(texts_of([150, 40, 95, 10, 70]))
    monkeypatch.setattr(score, "warmup_shapes", lambda *a: [])
    with pytest.warns(UserWarning, match="eval plain: torch.compile built [12] graph"):
        got = run("plain", tiny_model(), val, split_documents(val.tokens, BOS), wide_cfg(96), BACKEND)
    assert got.compile["graphs_warmup"] == 0 and got.compile["graphs_scoring"] >= 1


def test_compiles_on_cuda_only_and_raises_the_recompile_limit():
    assert ec.backend_for(True, torch.device("cpu")) is None and ec.backend_for(False, torch.device("cuda")) is None
    assert ec.backend_for(True, torch.device("cuda")) == tc.BACKEND
    val = text_val(texts_of([30, 20]))
    model, cfg = tiny_model(), eval_cfg(compile=True)
    docs, plain = split_documents(val.tokens, BOS), score_cfg(docs=0, seq_len=24, batch_windows=4)
    got = run_mode("plain", model, val, docs, plain, cfg, context(model, cfg, looped=True))
    assert got.compile["enabled"] is False
    with torch._dynamo.config.patch(recompile_limit=8):  # a monkeypatch of Dynamo's config deletes it on undo
        tc.raise_recompile_limit(30)
        assert torch._dynamo.config.recompile_limit >= 30
