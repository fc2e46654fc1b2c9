"""BPB: the formula, the plain doc-masked evaluation (exactly-once scoring, doc isolation, batch and rank
invariance, a real 2-process gloo reduction) and validation loading from the sidecar or the tokenizer LUTs."""

import json
import math
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf import tokenizer as tok
from pgolf.data import docs, shards
from pgolf.errors import PgolfError
from pgolf.eval.bpb import BpbTotals, ValData, doc_windows, evaluate, load_val, loss_to_bpb

BOS = 1
VOCAB = 50


def test_formula_by_hand():
    assert loss_to_bpb(8 * math.log(2), 4) == pytest.approx(2.0, rel=1e-15)
    totals = BpbTotals()
    totals.add(3.0, 2, 5)
    totals.add(1.5, 1, 0)  # a BOS target: nats and a token, no bytes
    assert (totals.nats, totals.tokens, totals.bytes) == (4.5, 3, 5)
    assert totals.val_loss == 1.5
    assert totals.val_bpb == pytest.approx(4.5 / (math.log(2) * 5), rel=1e-15)
    with pytest.raises(ValueError, match="positive byte count"):
        loss_to_bpb(1.0, 0)
    assert totals.all_reduce() == totals and totals.all_reduce() is not totals  # not distributed: a copy


def synthetic_val(length=1000, seed=0) -> ValData:
    """Unique ids (2 + position) except BOS at random document starts; random bytes, 0 on BOS targets."""
    rng = np.random.default_rng(seed)
    tokens = (2 + np.arange(length)).astype(np.uint16)
    starts = np.concatenate([[0], np.sort(rng.choice(np.arange(1, length), size=length // 20, replace=False))])
    tokens[starts] = BOS
    target_bytes = rng.integers(1, 6, size=length).astype(np.int64)
    target_bytes[starts] = 0
    return ValData(tokens, target_bytes, "sidecar")


def uniform_loss(inputs, targets, cu_seqlens):
    return torch.full(targets.shape, math.log(VOCAB), dtype=torch.float64)


def dyadic_loss(inputs, targets, cu_seqlens):
    """Token-dependent nats that are exact in float64 whatever the summation order."""
    return ((targets % 4) + 1).float() * 0.25


class CheckingLoss:
    """A fake model that checks what evaluate passes it and records the scored target positions."""

    def __init__(self):
        self.positions, self.bos_targets = [], 0

    def __call__(self, inputs, targets, cu_seqlens):
        num_rows, seq_len = inputs.shape
        assert inputs.dtype == targets.dtype == torch.int64 and cu_seqlens.dtype == torch.int32
        assert torch.equal(targets[:, :-1], inputs[:, 1:])
        bounds, flat = cu_seqlens.tolist(), inputs.reshape(-1)
        assert len(bounds) % 64 == 0 and bounds[-1] == num_rows * seq_len
        assert set(range(0, num_rows * seq_len, seq_len)) <= set(bounds), "a segment crosses a window"
        for a, b in zip(bounds, bounds[1:], strict=False):
            assert not (flat[a + 1 : b] == BOS).any(), "a segment crosses a BOS"
        t = targets.reshape(-1).numpy()
        self.positions.extend((t[t != BOS] - 2).tolist())
        self.bos_targets += int((t == BOS).sum())
        return dyadic_loss(inputs, targets, cu_seqlens)


def test_every_target_of_the_truncated_stream_is_scored_once_and_docs_are_isolated():
    val, seq_len = synthetic_val(), 16
    loss = CheckingLoss()
    totals = evaluate(loss, val, seq_len=seq_len, batch_windows=5, bos_id=BOS)
    usable = (len(val.tokens) - 1) // seq_len * seq_len
    assert usable == 992 and totals.tokens == usable
    scored = val.tokens[1 : usable + 1]
    assert sorted(loss.positions) == [p for p in range(1, usable + 1) if val.tokens[p] != BOS]
    assert len(set(loss.positions)) == len(loss.positions)
    assert loss.bos_targets == int((scored == BOS).sum())
    assert totals.bytes == int(val.target_bytes[1 : usable + 1].sum())


def test_uniform_model_gives_ln_v():
    val, seq_len = synthetic_val(), 16
    totals = evaluate(uniform_loss, val, seq_len=seq_len, batch_windows=4, bos_id=BOS)
    assert totals.val_loss == pytest.approx(math.log(VOCAB), rel=1e-13)
    expected = totals.tokens * math.log(VOCAB) / (math.log(2) * totals.bytes)
    assert totals.val_bpb == pytest.approx(expected, rel=1e-13)


def test_batch_size_does_not_change_the_result():
    val = synthetic_val(seed=1)
    one = evaluate(dyadic_loss, val, seq_len=16, batch_windows=1, bos_id=BOS)
    three = evaluate(dyadic_loss, val, seq_len=16, batch_windows=3, bos_id=BOS)
    assert one == three and one.nats > 0


def test_windows_split_across_ranks_without_dropping():
    for world_size in (1, 2, 3, 8):
        parts = [doc_windows(1000, 16, rank=r, world_size=world_size) for r in range(world_size)]
        assert [w for part in parts for w in part] == [(16 * k, 16 * k + 17) for k in range(62)]
    with pytest.raises(ValueError, match="fewer than one window"):
        doc_windows(16, 16)


def test_rank_shares_sum_to_the_single_process_totals():
    val = synthetic_val(seed=2)
    single = evaluate(dyadic_loss, val, seq_len=16, batch_windows=4, bos_id=BOS)
    kwargs = {"seq_len": 16, "batch_windows": 4, "bos_id": BOS, "world_size": 3}
    parts = [evaluate(dyadic_loss, val, rank=r, **kwargs) for r in range(3)]
    summed = (sum(p.nats for p in parts), sum(p.tokens for p in parts), sum(p.bytes for p in parts))
    assert summed == (single.nats, single.tokens, single.bytes)


def _gloo_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        totals = evaluate(
            dyadic_loss, synthetic_val(seed=3), seq_len=16, batch_windows=4, bos_id=BOS, rank=rank, world_size=2
        )
        (out_dir / f"{rank}.json").write_text(json.dumps([totals.nats, totals.tokens, totals.bytes]))
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    single = evaluate(dyadic_loss, synthetic_val(seed=3), seq_len=16, batch_windows=4, bos_id=BOS)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [single.nats, single.tokens, single.bytes]


def test_loss_fn_shape_is_checked():
    with pytest.raises(ValueError, match="per-token nats"):
        evaluate(lambda i, t, c: t.sum(), synthetic_val(), seq_len=16, batch_windows=2, bos_id=BOS)


def _without_sidecar(shard_dir, out):
    """A copy of the shards as published ones come: no val_bytes files, LUT byte count in the manifest."""
    out.mkdir()
    for path in shards.shard_paths(shard_dir, "val"):
        shutil.copy(path, out / path.name)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "byte_count": "tokenizer_luts"}))
    return out


def test_load_val_sidecar_counts_the_documents_bytes_and_luts_agree(built, tmp_path):
    docs_dir, tok_dir, shard_dir = built
    meta = tok.read_meta(tok_dir)
    val = load_val(shard_dir, tok_dir)
    text_bytes = sum(len(d.text.encode("utf-8")) for d in docs.read_docs(docs_dir, "val"))
    assert val.byte_count == "sidecar" and val.target_bytes[0] == 0
    assert int(val.target_bytes.sum()) == text_bytes
    np.testing.assert_array_equal(val.tokens, shards.load_shards(shard_dir, "val"))
    totals = evaluate(uniform_loss, val, seq_len=64, batch_windows=8, bos_id=meta["bos_id"])
    usable = (len(val.tokens) - 1) // 64 * 64
    assert totals.bytes == int(val.target_bytes[1 : usable + 1].sum())
    published = _without_sidecar(shard_dir, tmp_path / "published")
    if meta["caseops"]:
        with pytest.raises(PgolfError, match=r"CaseOps.*~9%.*pitfall 2"):
            load_val(published, tok_dir)
        return
    lut = load_val(published, tok_dir)
    assert lut.byte_count == "tokenizer_luts" and lut.target_bytes[0] == 0
    np.testing.assert_array_equal(lut.tokens, val.tokens)
    assert (lut.target_bytes[lut.tokens == meta["bos_id"]] == 0).all()
    # lossless tokenizer: the LUT misses only a leading space right after BOS (and nothing else)
    assert 0 <= text_bytes - int(lut.target_bytes.sum()) <= int((val.tokens == meta["bos_id"]).sum())
    assert np.mean(lut.target_bytes == val.target_bytes) > 0.99


def test_manifest_sidecar_without_files_is_an_error(built, tmp_path):
    _, tok_dir, shard_dir = built
    published = _without_sidecar(shard_dir, tmp_path / "published")
    manifest = json.loads((published / "manifest.json").read_text())
    (published / "manifest.json").write_text(json.dumps({**manifest, "byte_count": "sidecar"}))
    with pytest.raises(PgolfError, match="no val_bytes"):
        load_val(published, tok_dir)
