"""Test-time training modes: zero learning rates reproduce the unadapted scores of the same windows, a positive
rate learns within documents, the phase schedule, #1802's phases, and a 2-process gloo run equals 1 process."""

import json
import math
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_eval_modes import (
    BOS,
    eval_cfg,
    one_thread,
    random_texts,
    repetitive_texts,
    run,
    run_modes,
    text_val,
    tiny_model,
)

from pgolf.eval.lora_ttt import doc_queue, phase_ends
from pgolf.score.compile import EvalForward
from pgolf.score.documents import chunk_window, num_chunks, split_documents
from pgolf.score.scores import Scores, TokenRecorder, score_windows

__all__ = ["one_thread"]  # the autouse fixture of test_eval_modes applies here too

ZERO_LR = {"lr": 0.0, "global_sgd": {"lr": 0.0, "momentum": 0.9, "epochs": 1, "chunk_tokens": 40, "seq_len": 24,
                                     "grad_clip": 1.0}}  # fmt: skip


def recorded(name, model, val, cfg):
    recorder = TokenRecorder(len(val.tokens))
    result = run(name, model, val, cfg, recorder)
    return result, recorder


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


def test_chunk_sgd_with_zero_lr_equals_sliding():
    val = text_val(random_texts(6, 5, 60, seed=5))
    cfg = eval_cfg(chunk_sgd={"lr": 0.0})
    _, chunk = recorded("chunk_sgd", tiny_model(), val, cfg)
    _, sliding = recorded("sliding", tiny_model(), val, cfg)
    np.testing.assert_allclose(chunk.nats[1:], sliding.nats[1:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["lora_ttt", "chunk_sgd"])
def test_positive_lr_learns_within_documents_of_a_repetitive_corpus(name):
    val = text_val(repetitive_texts(6, 96, 8, seed=6))
    model = tiny_model(noise=0.1)
    fixed = run("sliding", model, val, eval_cfg()).totals.val_loss
    cfg = eval_cfg(lora_ttt={"lr": 3e-2, "chunk_size": 8}, chunk_sgd={"lr": 0.2, "chunk_tokens": 48, "epochs": 3})
    adapted = run(name, model, val, cfg).totals.val_loss
    assert adapted < fixed - 0.1, (adapted, fixed)


def test_documents_are_queued_longest_batch_first_and_phases_follow_prefix_counts():
    val = text_val(random_texts(10, 1, 60, seed=7))
    docs = split_documents(val.tokens, BOS)
    queue = doc_queue(docs, 3)
    assert [len(b) for b in queue] == [1, 3, 3, 3]  # the 1 longest document forms the last, first-queued batch
    lengths = [d.num_targets for b in queue for d in b]
    assert max(lengths) == lengths[0] and sorted(d.index for b in queue for d in b) == list(range(10))
    assert phase_ends(queue, [1, 5, 7]) == [(0, 1), (2, 5)]  # 7 docs are reached after the last-but-one batch...
    assert phase_ends(queue, [100]) == []  # ... and a boundary at or after the last batch trains nothing


def test_multi_phase_re_scores_every_target_in_every_pass():
    val = text_val(random_texts(6, 10, 60, seed=8))
    cfg = eval_cfg()
    result, recorder = recorded("multi_phase", tiny_model(), val, cfg)
    sliding = run("sliding", tiny_model(), val, cfg)
    assert result.passes == 3 and [p["phase"] for p in result.phases] == [0, 1, 2]
    assert result.phases[0]["val_bpb"] == pytest.approx(sliding.totals.val_bpb, rel=1e-9)
    assert result.phases[-1]["val_bpb"] == result.totals.val_bpb != result.phases[0]["val_bpb"]
    assert recorder.counts[1:].min() == 3  # every target scored in each of the 3 phases


def _gloo_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        results = run_modes(tiny_model(), text_val(random_texts(9, 5, 70, seed=9)), _dist_cfg())
        out = {k: [r.totals.nats, r.totals.tokens, r.totals.bytes] for k, r in results.items()}
        (out_dir / f"{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _dist_cfg():
    return eval_cfg(lora_ttt={"warm_start_a": False}, multi_phase={"enabled": False})


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_gives_the_single_process_totals(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    single = run_modes(tiny_model(), text_val(random_texts(9, 5, 70, seed=9)), _dist_cfg())
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert set(got) == set(single)
        for name, (nats, tokens, num_bytes) in got.items():
            want = single[name].totals
            assert (tokens, num_bytes) == (want.tokens, want.bytes), name
            assert math.isclose(nats, want.nats, rel_tol=1e-5), (name, nats, want.nats)
