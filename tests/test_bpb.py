"""BPB: the formula, the one scorer's sums (exactly-once scoring of whole documents, doc isolation, batch, window and
rank invariance, a real 2-process gloo reduction), the document set's name, and validation loading from the sidecar
or the tokenizer LUTs."""

import json
import math
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.data import docs, shards
from pgolf.data import tokenizer as tok
from pgolf.errors import PgolfError
from pgolf.score.bpb import BpbTotals, ValData, load_val, loss_to_bpb
from pgolf.score.documents import gather, split_documents
from pgolf.score.scorer import ScoreConfig, document_set, document_windows, scored_documents
from pgolf.score.scores import EvalContext, Scores, score_windows
from pgolf.score.unigram import score_token_model

BOS = 1
VOCAB = 50


def test_formula_by_hand():
    assert loss_to_bpb(8 * math.log(2), 4) == pytest.approx(2.0, rel=1e-15)
    totals = BpbTotals(3.0 + 1.5, 2 + 1, 5 + 0)  # a BOS target adds nats and a token, no bytes
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


IDS = 2048  # every synthetic id (2 + position) is below this
UNIFORM = torch.full((IDS,), -math.log(VOCAB), dtype=torch.float64)
DYADIC = -((torch.arange(IDS) % 4) + 1).double() * 0.25  # nats exact in float64 whatever the summation order


def score(log_probs, val, seq_len=16, batch_windows=5, docs=0, rank=0, world_size=1):
    """The one scorer's totals for a token-only model (the same windows and sums as :func:`score_model`)."""
    cfg = ScoreConfig(docs=docs, seq_len=seq_len, batch_windows=batch_windows)
    return score_token_model(log_probs, val, scored_documents(val, cfg, BOS), cfg, EvalContext(False, rank, world_size))


class CheckingForward:
    """A scoring forward that checks the rows it is given and records the scored target positions."""

    compiled, device = False, torch.device("cpu")

    def __init__(self):
        self.rows = []

    def gather(self, val, windows, rows=0):
        out = gather(val, windows)
        self.rows.append(out)
        return out

    def __call__(self, inputs, targets, adapters=None):
        assert inputs.dtype == targets.dtype == torch.int64
        valid = torch.from_numpy(self.rows[-1].positions[:, 1:] > 0)  # the next input is a real token
        assert torch.equal(targets[:, :-1][valid], inputs[:, 1:][valid])  # targets are the inputs shifted by one
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


def test_docs_takes_a_prefix_of_the_documents():
    val = synthetic_val(seed=4)
    docs = split_documents(val.tokens, BOS)
    part = score(DYADIC, val, docs=5)
    assert part.tokens == sum(d.num_targets for d in docs[:5]) < len(val.tokens) - 1


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


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_matches_one_process(tmp_path):
    mp.spawn(_gloo_worker, args=(2, _free_port(), tmp_path), nprocs=2, join=True)
    single = score(DYADIC, synthetic_val(seed=3), batch_windows=4)
    for rank in range(2):
        assert json.loads((tmp_path / f"{rank}.json").read_text()) == [single.nats, single.tokens, single.bytes]


def test_document_set_names_the_scored_tokens_and_bytes():
    val = synthetic_val(seed=5)
    docs = split_documents(val.tokens, BOS)
    named = document_set(val, docs[:4])
    assert named["count"] == 4 and named["targets"] == sum(d.num_targets for d in docs[:4])
    assert named["bytes"] == int(val.target_bytes[1 : docs[3].end].sum())
    assert document_set(val, docs[:4]) == named and document_set(val, docs[:5])["sha256"] != named["sha256"]
    changed = ValData(val.tokens, val.target_bytes.copy(), val.byte_count)
    changed.target_bytes[2] += 1
    assert document_set(changed, docs[:4])["sha256"] != named["sha256"]


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
    cfg = ScoreConfig(docs=0, seq_len=64, batch_windows=8)
    all_docs = scored_documents(val, cfg, meta["bos_id"])
    totals = score_token_model(UNIFORM[: meta["vocab_size"]], val, all_docs, cfg, EvalContext(False))
    assert totals.bytes == text_bytes and totals.tokens == len(val.tokens) - 1
    published = _without_sidecar(shard_dir, tmp_path / "published")
    if meta["caseops"]:
        with pytest.raises(PgolfError, match=r"CaseOps.*~9%; re-run the tokenize stage"):
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


@pytest.mark.parametrize("kind", ["val_bytes", "val"])
def test_a_changed_sidecar_or_val_shard_is_refused_naming_the_file(built, tmp_path, kind):
    """A corrupted byte sidecar gave val_bpb 0.1365 (true 2.029) with exit code 0, and a changed valid token id
    passed every check: the manifest's sha256 of every val file is verified when the val data is loaded."""
    _, tok_dir, shard_dir = built
    copy = tmp_path / "shards"
    shutil.copytree(shard_dir, copy)
    load_val(copy, tok_dir)  # as written: accepted
    path = shards.shard_paths(copy, kind)[0]
    values = shards.read_shard(path).copy()
    values[5] = values[5] + 1 if kind == "val_bytes" else (values[5] + 1) % 300 or 2  # still a valid value
    shards.write_shard(path, values)
    with pytest.raises(PgolfError, match=rf"{path.name}: its content changed after the tokenize stage.*dvc repro"):
        load_val(copy, tok_dir)
    stray = copy / f"{kind}_{len(shards.shard_paths(copy, kind)):06d}.bin"  # the next index of the split
    shutil.copy(path, stray)
    shards.write_shard(path, shards.read_shard(shards.shard_paths(shard_dir, kind)[0]))  # restored
    with pytest.raises(PgolfError, match=rf"{stray.name}: not written by the tokenize stage"):
        load_val(copy, tok_dir)
