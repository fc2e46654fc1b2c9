"""pgolf.score.scores, the one scorer's sums: exactly-once scoring of whole documents, doc isolation, batch,
window and rank invariance, a real 2-process gloo reduction."""

import json
import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.score.documents import PAD_ID, gather, split_documents
from pgolf.score.scorer import document_windows
from pgolf.score.scores import Scores, score_windows
from tests.helpers.common import free_port
from tests.helpers.score import BOS, DYADIC, UNIFORM, VOCAB, score, synthetic_val


class CheckingForward:
    """A scoring forward that checks the rows it is given and records the scored target positions."""

    compiled, device = False, torch.device("cpu")

    def __init__(self):
        self.rows = []

    def gather(self, val, windows, rows=0):
        self.val_tokens = val.tokens
        out = gather(val, windows)
        self.rows.append(out)
        return out

    def __call__(self, inputs, targets, adapters=None, cols=None):
        assert inputs.dtype == targets.dtype == cols.dtype == torch.int64 and targets.shape == cols.shape
        rows = self.rows[-1]
        mask = torch.from_numpy(rows.mask)
        nxt = inputs.gather(1, (cols + 1).clamp(max=inputs.shape[1] - 1))  # the input after each scored column
        inside = mask & (cols + 1 < inputs.shape[1]) & (nxt != PAD_ID)  # ... where the window holds one
        assert inside.any() and torch.equal(targets[inside], nxt[inside])
        truth = np.asarray(self.val_tokens)[rows.positions[rows.mask]].astype(np.int64)
        assert torch.equal(targets[mask], torch.from_numpy(truth))
        return -DYADIC[targets]


def test_every_target_is_scored_once_inside_its_own_document():
    val, seq_len = synthetic_val(), 16
    docs = split_documents(val.tokens, BOS)
    forward, scores = CheckingForward(), Scores(torch.device("cpu"))
    score_windows(forward, val, document_windows(docs, seq_len, seq_len), scores, batch_windows=5)
    positions = np.concatenate([r.positions[r.mask] for r in forward.rows])
    assert sorted(positions.tolist()) == list(range(1, len(val.tokens)))  # every target once, none truncated
    for rows in forward.rows:  # a row holds one document's tokens: a BOS only at its start
        assert not ((rows.inputs[:, 1:] == BOS) & (rows.positions[:, 1:] > 0)).any()
    totals = scores.totals()
    assert totals.tokens == len(val.tokens) - 1 and totals.bytes == int(val.target_bytes[1:].sum())
    assert totals.nats == float(-DYADIC[torch.from_numpy(val.tokens[1:].astype(np.int64))].sum())
    assert totals == score(DYADIC, val)


def test_uniform_model_gives_ln_v():
    totals = score(UNIFORM, synthetic_val())
    assert totals.val_loss == pytest.approx(math.log(VOCAB), rel=1e-13)
    expected = totals.tokens * math.log(VOCAB) / (math.log(2) * totals.bytes)
    assert totals.val_bpb == pytest.approx(expected, rel=1e-13)


def test_batch_size_and_window_do_not_change_the_scored_set():
    val = synthetic_val(seed=1)
    one, three = score(DYADIC, val, batch_windows=1), score(DYADIC, val, batch_windows=3)
    assert one == three and one.nats > 0
    wide = score(DYADIC, val, seq_len=64)  # a token-only model: the context length cannot matter
    assert (wide.nats, wide.tokens, wide.bytes) == (one.nats, one.tokens, one.bytes)


def test_rank_shares_sum_to_the_single_process_totals():
    val = synthetic_val(seed=2)
    single = score(DYADIC, val, batch_windows=4)
    parts = [Scores(torch.device("cpu")) for _ in range(3)]
    docs = split_documents(val.tokens, BOS)
    for rank, part in enumerate(parts):
        score_windows(CheckingForward(), val, document_windows(docs, 16, 16), part, batch_windows=4, rank=rank,
                      world_size=3)  # fmt: skip
    local = [p.local() for p in parts]
    summed = (sum(p.nats for p in local), sum(p.tokens for p in local), sum(p.bytes for p in local))
    assert summed == (single.nats, single.tokens, single.bytes)


def _gloo_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        totals = score(DYADIC, synthetic_val(seed=3), batch_windows=4, rank=rank, world_size=world_size)
        (out_dir / f"{rank}.json").write_text(json.dumps([totals.nats, totals.tokens, totals.bytes]))
    finally:
        dist.destroy_process_group()


def test_two_process_gloo_matches_one_process(tmp_path):
    mp.spawn(_gloo_worker, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    single = score(DYADIC, synthetic_val(seed=3), batch_windows=4)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [single.nats, single.tokens, single.bytes]
