"""pgolf.eval.lora_ttt: zero learning rates reproduce the unadapted scores of the same windows, the document
queue and phases, the warm-up shapes, the post-#1855 knobs (#1923, #1953, #2014, #2135: AsymLogit, a 3072-token
context, short-document chunks, the per-document lr multiplier, adapter site masks, one global phase, the
unclipped validation tail) and the n-gram tilt inside TTT (it scores, the update learns from the untilted loss,
it stays score-first)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgolf.config import ConfigError
from pgolf.eval import lora_ttt as ttt_lora
from pgolf.eval import ngram
from pgolf.eval.audit import bytes_audit, score_first_audit, text_bytes
from pgolf.eval.lora_ttt import (
    AsymSoftcap,
    LoraTtt,
    asym_softcap,
    batch_chunk_size,
    chunk_widths,
    doc_queue,
    phase_ends,
)
from pgolf.model.gpt import GPT
from pgolf.score import compile as ec
from pgolf.score.compile import EvalForward
from pgolf.score.documents import chunk_window, num_chunks, split_documents
from pgolf.score.scores import EvalContext, Scores, TokenRecorder, score_windows
from tests.helpers.config import eval_cfg, model_cfg
from tests.helpers.eval import (
    BOS,
    VOCAB,
    ZERO_LR,
    random_texts,
    recorded,
    run,
    text_val,
    texts_of,
    tilt_cfg,
    tiny_model,
    wide_cfg,
)

BACKEND = "aot_eager"


@pytest.mark.usefixtures("one_thread")
def test_lora_ttt_with_zero_learning_rates_scores_like_the_unadapted_model_on_the_same_chunk_windows():
    val = text_val(random_texts(8, 1, 60, seed=4))
    model, cfg = tiny_model(), eval_cfg(lora_ttt=ZERO_LR)
    result, ttt = recorded("lora_ttt", model, val, cfg)
    c = cfg.lora_ttt
    docs = split_documents(val.tokens, BOS)
    windows = [chunk_window(d, k, c.chunk_size, c.context) for d in docs for k in range(num_chunks(d, c.chunk_size))]
    plain = TokenRecorder(len(val.tokens))
    scores = Scores(torch.device("cpu"), plain)
    eager = EvalForward(model, looped=True, backend=None, max_width=c.context)
    score_windows(eager, val, windows, scores, batch_windows=1)
    assert np.array_equal(ttt.counts, plain.counts) and ttt.counts[1:].min() == 1
    np.testing.assert_allclose(ttt.nats[1:], plain.nats[1:], rtol=0, atol=1e-5)
    assert result.totals.nats == pytest.approx(scores.local().nats, rel=1e-7)
    sgd_phases = [p for p in result.phases if p["sgd_docs"]]
    assert len(sgd_phases) == 1  # batches of 2, 3, 3 docs: the 6-doc boundary falls in the last batch
    assert result.phases[-1]["documents"] == len(docs)
    assert result.phases[-1]["val_bpb_so_far"] == pytest.approx(result.totals.val_bpb, rel=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_documents_are_queued_longest_batch_first_and_phases_follow_prefix_counts():
    val = text_val(random_texts(10, 1, 60, seed=7))
    docs = split_documents(val.tokens, BOS)
    queue = doc_queue(docs, 3)
    assert [len(b) for b in queue] == [1, 3, 3, 3]  # the 1 longest document forms the last, first-queued batch
    lengths = [d.num_targets for b in queue for d in b]
    assert max(lengths) == lengths[0] and sorted(d.index for b in queue for d in b) == list(range(10))
    assert phase_ends(queue, [1, 5, 7]) == [(0, 1), (2, 5)]  # 7 docs are reached after the last-but-one batch...
    assert phase_ends(queue, [100]) == []  # ... and a boundary at or after the last batch trains nothing


@pytest.mark.usefixtures("one_thread", "fresh_dynamo")
def test_lora_warmup_shapes_bound_every_chunk_call():
    """The warm-up runs the largest call (batch_docs rows, the context, the largest chunk) and a small one, from
    the configuration alone; every chunk call's (rows, width, scored) lies between them, so the one dynamic graph
    serves it, and a one-document batch (a size of one specializes a dynamic graph) is warmed up too."""
    val = text_val(texts_of([5, 400, 48, 49, 23, 24, 25, 170, 160, 1]))
    docs, cfg = split_documents(val.tokens, BOS), wide_cfg(160).lora_ttt
    forward = ec.EvalForward(tiny_model(), True, BACKEND, max_width=cfg.context, min_rows=0)
    ttt = LoraTtt(forward, val, cfg, scores=None, ctx=EvalContext(True))
    batches = [docs[:3], docs[3:5], docs[5:6], docs[6:9]]  # at most batch_docs (3) each, as the queue makes them
    shapes = ttt.warmup_shapes(batches)
    big, small = shapes[0], shapes[1]
    assert big == (cfg.batch_docs, cfg.context, cfg.chunk_size) and small == (2, ec.MIN_WIDTH, ec.MIN_SCORED)
    assert (1, ec.MIN_WIDTH, ec.MIN_SCORED) in shapes  # docs[5:6] is a batch of one
    assert ttt.warmup_shapes([docs[:3]]) == [big, small]  # no such batch: no such shape
    for batch in batches:
        for c in range(max(num_chunks(d, cfg.chunk_size) for d in batch)):
            rows = forward.gather(val, [chunk_window(d, c, cfg.chunk_size, cfg.context) for d in batch])
            call = (*rows.inputs.shape, rows.cols.shape[1])
            floor = small if len(batch) > 1 else (1, ec.MIN_WIDTH, ec.MIN_SCORED)
            assert all(lo <= x <= hi for lo, x, hi in zip(floor, call, big, strict=True)), (call, big, floor)


# --- the post-#1855 knobs -----------------------------------------------------------------------------------


SHORT = [{"max_len": 12, "chunk_size": 2}, {"max_len": 30, "chunk_size": 4}]


def lora_recorded(model, val, cfg):
    recorder = TokenRecorder(len(val.tokens))
    return run("lora_ttt", model, val, cfg, recorder), recorder


def one_layer_model(noise: float = 0.3) -> GPT:
    """A single jittered layer, no recurrence: the cheapest model for long rows and compiling."""
    torch.manual_seed(0)
    model = GPT(model_cfg(num_layers=1, parallel_mode="none", parallel_start_layer=1, loop_start=0, loop_end=0,
                          num_loops=0, xsa_last_n=1))  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def audit_lora_ttt(val, cfg, doc_index: int, cut: int):
    model = tiny_model()
    doc = split_documents(val.tokens, BOS)[doc_index]
    return score_first_audit(lambda v, rec: run("lora_ttt", model, v, cfg, rec), val, doc, cut, VOCAB)


@pytest.mark.usefixtures("one_thread")
def test_asym_softcap_matches_a_float64_hand_formula_and_its_gradient():
    zs = [-200.0, -31.0, -1.5, -1e-4, 0.0, 1e-4, 2.5, 29.0, 150.0]
    sp, sn = 20.0, 45.0
    z = torch.tensor(zs, dtype=torch.float64)
    caps = torch.tensor([sp, sn], dtype=torch.float64, requires_grad=True)
    out = asym_softcap(z, caps[0], caps[1])
    want = [sp * math.tanh(x / sp) if x > 0 else sn * math.tanh(x / sn) for x in zs]
    assert out.tolist() == pytest.approx(want, rel=1e-15, abs=1e-15)
    out.sum().backward()

    def dcap(x, c):  # d/dc c*tanh(x/c) = tanh(u) - u (1 - tanh(u)^2), u = x/c
        u = x / c
        return math.tanh(u) - u * (1 - math.tanh(u) ** 2)

    assert caps.grad[0].item() == pytest.approx(sum(dcap(x, sp) for x in zs if x > 0), rel=1e-12)
    assert caps.grad[1].item() == pytest.approx(sum(dcap(x, sn) for x in zs if x <= 0), rel=1e-12)


@pytest.mark.usefixtures("one_thread")
def test_asym_caps_at_the_fixed_cap_score_exactly_like_the_symmetric_cap():
    model = tiny_model()
    ids = torch.randint(2, VOCAB, (3, 40), generator=torch.Generator().manual_seed(0))
    targets = torch.roll(ids, -1, dims=1)
    cap = AsymSoftcap(model.cfg.logit_softcap)
    with torch.no_grad():
        assert torch.equal(model(ids, logit_cap=cap), model(ids))
        assert torch.equal(model(ids, targets, reduction="none", logit_cap=cap), model(ids, targets, reduction="none"))
        cap.sp.fill_(10.0), cap.sn.fill_(50.0)
        nats = EvalForward(model, False, None, max_width=40, logit_cap=cap)(ids, targets)  # the TTT forward caps
        assert torch.equal(nats, model(ids, targets, reduction="none", logit_cap=cap))
        assert not torch.allclose(nats, model(ids, targets, reduction="none"))
    # A whole lora_ttt run whose global SGD cannot move the caps (lr 0) scores like the symmetric run.
    val = text_val(random_texts(8, 10, 50, seed=1))
    off, on = (run("lora_ttt", tiny_model(), val, eval_cfg(lora_ttt={**ZERO_LR, "lr": 1e-2, "asym_logit": asym}))
               for asym in (False, True))  # fmt: skip
    assert on.totals.nats == off.totals.nats and on.phases[-1]["asym_sp"] == on.phases[-1]["asym_sn"] == 30.0
    assert "asym_sp" not in off.phases[-1]


@pytest.mark.usefixtures("one_thread")
def test_asym_caps_learn_in_global_sgd_only_and_the_mode_stays_score_first(monkeypatch):
    texts = random_texts(9, 20, 50, seed=2)
    val = text_val(texts)
    sgd = {**ZERO_LR["global_sgd"], "lr": 0.1}  # the caps get a small share of the clipped gradient: a large lr
    cfg = eval_cfg(lora_ttt={"asym_logit": True, "phases": [3], "batch_docs": 3, "global_sgd": sgd})
    seen: dict[str, list] = {"adamw": [], "sgd": []}

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, **kw):
            params = list(params)
            seen["adamw"].append(params)
            super().__init__(params, **kw)

    class SGD(torch.optim.SGD):
        def __init__(self, params, **kw):
            params = list(params)
            seen["sgd"].append(params)
            super().__init__(params, **kw)

    forwards = []

    class Forward(EvalForward):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            forwards.append(self)

    with monkeypatch.context() as m:
        m.setattr(torch.optim, "AdamW", AdamW)
        m.setattr(torch.optim, "SGD", SGD)
        m.setattr(ttt_lora, "EvalForward", Forward)
        result, recorder = lora_recorded(tiny_model(noise=1.0), val, cfg)  # logits of ~ +-10: the caps matter
    model_params = len(list(tiny_model().parameters()))
    assert [len(p) for p in seen["sgd"]] == [model_params + 2]  # one global SGD: the weights, then sp and sn
    assert all(p.dim() == 0 for p in seen["sgd"][0][-2:])
    assert seen["adamw"] and all(p.dim() == 4 for ps in seen["adamw"] for p in ps)  # LoRA A and B only
    first, last = result.phases[0], result.phases[-1]
    assert first["sgd_docs"] == 3 and last["sgd_docs"] == 0
    assert (first["asym_sp"], first["asym_sn"]) == (last["asym_sp"], last["asym_sn"])  # no change between pauses
    assert abs(last["asym_sp"] - 30.0) > 1e-5 and abs(last["asym_sn"] - 30.0) > 1e-5, last
    assert last["asym_sp"] != last["asym_sn"]
    (cap,) = [f.logit_cap for f in forwards]  # the chunks are scored through the caps global SGD trains
    assert (float(cap.sp), float(cap.sn)) == (last["asym_sp"], last["asym_sn"])
    assert recorder.counts[1:].min() == recorder.counts.max() == 1
    assert bytes_audit(result.totals, text_bytes(texts)).passed
    audit = audit_lora_ttt(val, cfg, doc_index=4, cut=12)
    assert audit.passed and audit.checked >= 12, audit.message


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.usefixtures("one_thread")
def test_compiled_lora_ttt_with_asym_caps_scores_like_the_eager_one():
    """The caps are graph inputs: global SGD's in-place updates reach the compiled forward."""
    val = text_val(random_texts(6, 20, 40, seed=3))  # 2 batches of 3 windows of <= 24 tokens: one shape
    docs = split_documents(val.tokens, BOS)
    cfg = eval_cfg(lora_ttt={"asym_logit": True, "phases": [3], "global_sgd": {**ZERO_LR["global_sgd"], "lr": 0.2}})
    results = [ttt_lora.evaluate_lora_ttt(one_layer_model(1.0), val, docs, cfg.lora_ttt,
                                          ctx=EvalContext(True, compile_backend=backend))
               for backend in (None, "aot_eager")]  # fmt: skip
    eager, compiled = results
    assert compiled.compile["graphs_scoring"] == 0
    assert compiled.phases[-1]["asym_sp"] == pytest.approx(eager.phases[-1]["asym_sp"], abs=1e-6) != 30.0
    assert compiled.totals.nats == pytest.approx(eager.totals.nats, rel=1e-5)


@pytest.mark.usefixtures("one_thread")
def test_context_3072_reaches_back_3072_tokens_on_a_long_document():
    texts = texts_of([40, 3099, 25], seed=4)  # 41, 3100 and 25 targets
    val = text_val(texts)
    chunk, context = 1536, 3072  # the long document's chunks: windows of 1536, 3072 and (capped) 3072 tokens
    cfg = eval_cfg(lora_ttt={**ZERO_LR, "chunk_size": chunk, "context": context, "phases": [], "batch_docs": 1})
    model = one_layer_model(noise=0.1)
    result, recorder = lora_recorded(model, val, cfg)
    assert recorder.counts[1:].min() == recorder.counts.max() == 1
    long_doc = split_documents(val.tokens, BOS)[1]
    tokens = torch.as_tensor(val.tokens.astype(np.int64))
    with torch.no_grad():
        for lo in range(0, long_doc.num_targets, chunk):
            end = long_doc.start + min(lo + chunk, long_doc.num_targets)  # stream position of the chunk's last input
            begin = max(long_doc.start, end - context)
            nats = model(tokens[None, begin:end], tokens[None, begin + 1 : end + 1], looped=True, reduction="none")
            scored = nats[0, long_doc.start + lo - begin :].double().numpy()
            positions = np.arange(long_doc.start + lo + 1, end + 1)
            np.testing.assert_allclose(recorder.nats[positions], scored, rtol=0, atol=1e-5)
    assert end - begin == context  # the last chunks saw the full 3072 tokens
    forward = EvalForward(model, True, "aot_eager", max_width=context)  # compiled shapes (nothing is compiled)
    ttt = LoraTtt(forward, val, cfg.lora_ttt, Scores(torch.device("cpu")), EvalContext(True))
    shapes = ttt.warmup_shapes(doc_queue(split_documents(val.tokens, BOS), cfg.lora_ttt.batch_docs))
    assert max(width for _, width, _ in shapes) == context


def short_schedule_texts() -> list[str]:
    """9 documents, in batches of 3 by length (BOS through the next BOS: characters + 2, the last document's
    characters + 1, having no trailing BOS): 5, 10, 12 | 13, 13, 13 | 21, 29, 33."""
    return texts_of([11, 8, 19, 3, 11, 10, 31, 11, 28], seed=5)


@pytest.mark.usefixtures("one_thread")
def test_short_chunks_pick_each_batch_chunk_size_by_its_longest_document(monkeypatch):
    texts = short_schedule_texts()
    val = text_val(texts)
    cfg = eval_cfg(lora_ttt={"chunk_size": 6, "short_chunks": SHORT, "phases": [3]})
    docs = split_documents(val.tokens, BOS)
    queue = doc_queue(docs, 3)
    longest = [max(d.num_targets for d in b) + 1 for b in queue]  # queued longest batch first
    assert longest == [33, 13, 12]
    assert [batch_chunk_size(b, cfg.lora_ttt) for b in queue] == [6, 4, 2]  # 33 > 30; 12 < 13 <= 30; 12 <= 12
    assert chunk_widths(queue[2], cfg.lora_ttt) == [2, 4, 6, 8, 10, 11]
    steps = []
    original = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: steps.append(1) or original(self, *a, **k))
    result, recorder = lora_recorded(tiny_model(), val, cfg)
    chunks = [math.ceil((n - 1) / size) for n, size in zip(longest, [6, 4, 2], strict=True)]  # 6, 3, 6 chunk steps
    assert recorder.step == sum(chunks) == 15
    assert len(steps) == sum(c - 1 for c in chunks)  # no AdamW step after a batch's last chunk
    assert recorder.counts[1:].min() == recorder.counts.max() == 1
    assert bytes_audit(result.totals, text_bytes(texts)).passed


@pytest.mark.usefixtures("one_thread")
def test_short_chunks_keep_the_mode_score_first():
    val = text_val(short_schedule_texts())
    cfg = eval_cfg(lora_ttt={"chunk_size": 6, "short_chunks": SHORT, "phases": [3]})
    audit = audit_lora_ttt(val, cfg, doc_index=1, cut=4)  # 9 targets, in the batch of chunks of 2
    assert audit.passed and audit.checked >= 4, audit.message


@pytest.mark.usefixtures("one_thread")
def test_short_chunks_and_local_lr_mult_are_validated():
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.short_chunks: max_len must be increasing \(got \[30, 12\]\)"):
        eval_cfg(lora_ttt={"short_chunks": [SHORT[1], SHORT[0]]})
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.short_chunks\[1\].chunk_size must lie in 1..eval"):
        eval_cfg(lora_ttt={"short_chunks": [SHORT[0], {"max_len": 40, "chunk_size": 25}]})  # context 24
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.short_chunks\[0\].chunk_size"):
        eval_cfg(lora_ttt={"short_chunks": [{"max_len": 40, "chunk_size": 0}]})
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.local_lr_mult: must be >= 0.0 \(got -0.5\)"):
        eval_cfg(lora_ttt={"local_lr_mult": -0.5})
    uncapped = GPT(model_cfg(logit_softcap=0.0))
    with pytest.raises(ConfigError, match="eval.lora_ttt.asym_logit needs model.logit_softcap > 0"):
        run("lora_ttt", uncapped, text_val(["abc"]), eval_cfg(lora_ttt={"asym_logit": True}))


@pytest.mark.usefixtures("one_thread")
def test_local_lr_mult_scales_the_per_document_adamw_lr_only(monkeypatch):
    lrs: dict[str, list[float]] = {"adamw": [], "sgd": []}

    class AdamW(torch.optim.AdamW):
        def __init__(self, params, lr, **kw):
            lrs["adamw"].append(lr)
            super().__init__(params, lr=lr, **kw)

    class SGD(torch.optim.SGD):
        def __init__(self, params, lr, **kw):
            lrs["sgd"].append(lr)
            super().__init__(params, lr=lr, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", AdamW)
    monkeypatch.setattr(torch.optim, "SGD", SGD)
    cfg = eval_cfg(lora_ttt={"lr": 0.02, "local_lr_mult": 0.75, "phases": [3]})
    run("lora_ttt", tiny_model(), text_val(random_texts(7, 10, 40, seed=6)), cfg)
    assert lrs["adamw"] and set(lrs["adamw"]) == {0.02 * 0.75}
    assert lrs["sgd"] == [cfg.lora_ttt.global_sgd.lr]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("sites", [["k", "o", "mlp", "head"], ["q", "v", "o", "mlp", "head"]], ids=["no_qv", "no_k"])
def test_adapter_masks_create_adapters_on_the_chosen_sites_only(monkeypatch, sites):
    made = []

    class Recording(ttt_lora.BatchedLoRA):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append((set(self.A), set(self.B)))

    monkeypatch.setattr(ttt_lora, "BatchedLoRA", Recording)
    val = text_val(random_texts(7, 10, 40, seed=7))
    masked = run("lora_ttt", tiny_model(), val, eval_cfg(lora_ttt={"sites": sites}))
    assert made and all(a == b == set(sites) for a, b in made)
    full = run("lora_ttt", tiny_model(), val, eval_cfg())
    assert masked.totals.tokens == full.totals.tokens and masked.totals.nats != full.totals.nats


@pytest.mark.usefixtures("one_thread")
def test_one_phase_runs_one_global_sgd_pass(monkeypatch):
    calls = []
    original = ttt_lora.train_stream
    monkeypatch.setattr(ttt_lora, "train_stream", lambda *a, **k: calls.append(1) or original(*a, **k))
    val = text_val(random_texts(9, 10, 40, seed=8))
    result = run("lora_ttt", tiny_model(), val, eval_cfg(lora_ttt={"phases": [4]}))
    assert len(calls) == 1
    assert [p["sgd_docs"] for p in result.phases] == [4, 0]  # batches of 3: the 4th document ends the 2nd batch
    assert [p["documents"] for p in result.phases] == [6, 9]


@pytest.mark.usefixtures("one_thread")
def test_the_validation_tail_is_scored_whole():
    """Every target 1 .. len - 1 of the stream is scored once, the last document's (no trailing BOS) included."""
    texts = random_texts(8, 1, 45, seed=9)
    val = text_val(texts)
    assert val.tokens[-1] != BOS
    cfg = eval_cfg(lora_ttt={"short_chunks": SHORT, "asym_logit": True})
    result, recorder = lora_recorded(tiny_model(), val, cfg)
    assert recorder.counts[0] == 0 and recorder.counts[1:].min() == recorder.counts.max() == 1
    assert result.totals.tokens == len(val.tokens) - 1
    assert bytes_audit(result.totals, text_bytes(texts)).passed


# --- the n-gram tilt inside TTT ------------------------------------------------------------------------------


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
    monkeypatch.setattr(
        ngram, "precompute_hints", lambda tokens, steps, order, **kw: real(tokens, steps[::-1], order, **kw)
    )
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
