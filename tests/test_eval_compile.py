"""The compiled scoring/TTT forward (``eval.compile``) on CPU with ``aot_eager``: bucketed shapes cover every call
and change no score, the compiled modes score like the eager ones, the warm-up leaves nothing to compile while
scoring (and a missed shape is reported), and the knob only compiles on CUDA."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_eval_modes import BOS, CHARS, eval_cfg, one_thread, text_val, tiny_model

from pgolf import compiler as tc
from pgolf.dist import to_device
from pgolf.eval.chunk_sgd import evaluate_chunk_sgd
from pgolf.eval.lora_ttt import LoraTtt, evaluate_lora_ttt
from pgolf.eval.modes import context, run_mode
from pgolf.eval.sliding import evaluate_sliding
from pgolf.score import compile as ec
from pgolf.score import scorer as score
from pgolf.score.documents import chunk_window, num_chunks, split_documents
from pgolf.score.scorer import ScoreConfig, score_model
from pgolf.score.scores import EvalContext, TokenRecorder

__all__ = ["one_thread"]  # the autouse fixture of test_eval_modes applies here too

BACKEND = "aot_eager"


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def run(name, model, val, docs, cfg, backend, recorder=None):
    """One mode called directly with a compile backend (the stage compiles on CUDA only), looped, on ``model``
    itself; ``plain`` is the one scorer with the sliding mode's window and batch."""
    ctx = EvalContext(True, recorder=recorder, compile_backend=backend)
    if name == "plain":
        score = ScoreConfig(docs=0, seq_len=cfg.sliding.seq_len, batch_windows=cfg.sliding.batch_windows)
        return score_model(model, val, docs, score, ctx)
    if name == "sliding":
        return evaluate_sliding(model, val, docs, cfg.sliding, ctx)
    if name == "lora_ttt":
        return evaluate_lora_ttt(model, val, docs, cfg.lora_ttt, ctx=ctx)
    return evaluate_chunk_sgd(model, val, docs, cfg.chunk_sgd, ctx=ctx)


def wide_cfg(width: int):
    """Windows and TTT contexts of up to ``width`` tokens (several buckets), LoRA batches of 3 and 2 documents."""
    return eval_cfg(sliding={"seq_len": width, "stride": 40},
                    lora_ttt={"chunk_size": 24, "context": width, "phases": [3]},
                    chunk_sgd={"seq_len": width, "stride": 40, "chunk_tokens": 300})  # fmt: skip


def texts_of(lengths: list[int], seed: int = 0) -> list[str]:
    """Random documents of the given lengths (each document has its length + 1 targets)."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARS), size=n)) for n in lengths]


def test_width_buckets():
    assert ec.width_buckets(2048) == (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
    assert ec.width_buckets(500) == (64, 96, 128, 192, 256, 384, 500)
    assert ec.width_buckets(24) == (24,)


class EagerRecorder:
    """Stands in for the compiled model: records the shape of every call, runs the model eagerly."""

    calls: list[tuple[int, int]] = []

    def __init__(self, model, backend):
        self.model = model

    def __call__(self, ids, targets, **kw):
        EagerRecorder.calls.append(tuple(ids.shape))
        return self.model(ids, targets, **kw)


@pytest.mark.parametrize("name", ["plain", "sliding", "lora_ttt", "chunk_sgd"])
def test_buckets_cover_every_call_of_short_and_long_documents_and_change_no_score(name, monkeypatch):
    """Documents of 2 to 300 tokens, windows up to 160 (buckets 64, 96, 128, 160): every scoring call has a warmed
    shape with a bucketed width, and the padded calls score every target as the eager, unpadded ones."""
    val = text_val(texts_of([300, 149, 3, 139, 119, 109, 99, 99, 89, 79, 69, 59, 49, 2]))
    docs, cfg = split_documents(val.tokens, BOS), wide_cfg(160)
    eager, padded = TokenRecorder(len(val.tokens)), TokenRecorder(len(val.tokens))
    want = run(name, tiny_model(), val, docs, cfg, None, eager)
    monkeypatch.setattr(tc, "CompiledModel", EagerRecorder)
    EagerRecorder.calls = []
    got = run(name, tiny_model(), val, docs, cfg, BACKEND, padded)
    warmed, scored = EagerRecorder.calls[: got.compile["shapes"]], EagerRecorder.calls[got.compile["shapes"] :]
    assert set(scored) <= set(warmed) and len(set(warmed)) == len(warmed), "a scoring shape was not warmed up"
    assert {w for _, w in scored} <= set(ec.width_buckets(160)) and len({w for _, w in scored}) >= 3
    rows = {3, 2} if name == "lora_ttt" else {4}  # TTT batches keep their size, windows pad to batch_windows
    assert {r for r, _ in scored} == rows
    assert np.array_equal(padded.counts, eager.counts) and eager.counts[1:].min() >= 1
    np.testing.assert_allclose(padded.nats[1:], eager.nats[1:], rtol=2e-6, atol=1e-7)
    assert (got.totals.tokens, got.totals.bytes) == (want.totals.tokens, want.totals.bytes)
    assert got.totals.val_bpb == pytest.approx(want.totals.val_bpb, rel=1e-6)


def test_lora_warmup_shapes_are_the_chunk_calls():
    """The analytic widths (min((c + 1) C, longest document, context)) against every chunk window's gather."""
    val = text_val(texts_of([5, 400, 48, 49, 23, 24, 25, 170, 160, 1]))
    docs, cfg = split_documents(val.tokens, BOS), wide_cfg(160).lora_ttt
    forward = ec.EvalForward(tiny_model(), True, BACKEND, max_width=cfg.context)
    ttt = LoraTtt(forward, val, cfg, scores=None, ctx=EvalContext(True))
    batches = [docs[:3], docs[3:5], docs[5:6], docs[6:]]
    calls = set()
    for batch in batches:
        for c in range(max(num_chunks(d, cfg.chunk_size) for d in batch)):
            rows = forward.gather(val, [chunk_window(d, c, cfg.chunk_size, cfg.context) for d in batch])
            calls.add(rows.inputs.shape)
    assert ttt.warmup_shapes(batches) == calls


def compile_warnings(caught) -> list[str]:
    return [str(w.message) for w in caught if "torch.compile" in str(w.message)]


@pytest.mark.parametrize("name", ["plain", "lora_ttt"])
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
    assert stats["graphs_scoring"] == 0 and stats["graphs_warmup"] == stats["shapes"] == (
        4 if name == "lora_ttt" else 2
    )
    assert want.compile["enabled"] is False and stats["enabled"] and "warmup" not in got.seconds
    np.testing.assert_allclose(compiled.nats[1:], eager.nats[1:], rtol=2e-6, atol=1e-7)
    assert got.totals.val_bpb == pytest.approx(want.totals.val_bpb, rel=1e-6)


def test_a_shape_the_warm_up_missed_is_compiled_while_scoring_and_reported(monkeypatch):
    val = text_val(texts_of([150, 40, 95, 10, 70]))
    monkeypatch.setattr(score, "batch_shapes", lambda *a: set())
    with pytest.warns(UserWarning, match="eval plain: torch.compile built 2 graph"):
        got = run("plain", tiny_model(), val, split_documents(val.tokens, BOS), wide_cfg(96), BACKEND)
    assert (got.compile["graphs_warmup"], got.compile["graphs_scoring"]) == (0, 2)


def test_compiles_on_cuda_only_and_raises_the_recompile_limit():
    assert ec.backend_for(True, torch.device("cpu")) is None and ec.backend_for(False, torch.device("cuda")) is None
    assert ec.backend_for(True, torch.device("cuda")) == tc.BACKEND
    val = text_val(texts_of([30, 20]))
    model, cfg = tiny_model(), eval_cfg(compile=True)
    docs, plain = split_documents(val.tokens, BOS), ScoreConfig(docs=0, seq_len=24, batch_windows=4)
    got = run_mode("plain", model, val, docs, plain, cfg, context(model, cfg, looped=True))
    assert got.compile["enabled"] is False
    with torch._dynamo.config.patch(recompile_limit=8):  # a monkeypatch of Dynamo's config deletes it on undo
        ec.set_recompile_limit(30)
        assert torch._dynamo.config.recompile_limit >= 30


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need CUDA")
def test_host_batches_reach_the_gpu_through_pinned_memory():
    batch = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = to_device(batch, torch.device("cuda"))
    assert got.is_cuda and torch.equal(got.cpu(), torch.from_numpy(batch))
