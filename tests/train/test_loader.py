"""pgolf.train.loader: the document-packing loader and cu_seqlens: reference semantics, shard advance, wrap,
resume, errors, prefetch, and a changing seq_len cap."""

import numpy as np
import pytest
import torch

from pgolf.data import shards
from pgolf.train.loader import Batch, PackingLoader, build_cu_seqlens
from tests.helpers.common import needs

BOS = 1


VOCAB = 4096  # above every id the test streams hold


def cu(bos, length, max_seq_len, pad=4):
    return build_cu_seqlens(np.asarray(bos, dtype=np.int64), length, max_seq_len, pad).tolist()


def test_cu_seqlens_doc_longer_than_max_is_cut_at_doc_start_plus_k_max():
    # docs start at 0 and 3; the second (3..20) is cut at 3+8=11 and 3+16=19
    assert cu([0, 3], 20, 8, pad=1) == [0, 3, 11, 19, 20]


def test_cu_seqlens_first_segment_is_a_doc_tail():
    assert cu([5, 9], 12, 100, pad=1) == [0, 5, 9, 12]
    # the tail segment is itself cut from position 0
    assert cu([10], 12, 4, pad=1) == [0, 4, 8, 10, 12]


def test_cu_seqlens_padding_repeats_length_to_a_multiple():
    out = build_cu_seqlens(np.array([0, 7, 30]), 50, 2048, 64)
    assert out.dtype == torch.int32 and out.numel() == 64
    assert out[:4].tolist() == [0, 7, 30, 50] and (out[4:] == 50).all()
    assert build_cu_seqlens(np.arange(64), 64, 1, 64).numel() == 128  # 65 boundaries -> 128
    assert build_cu_seqlens(np.arange(63), 64, 0, 64).numel() == 64  # 0..62 + [64]: exactly 64


def test_cu_seqlens_empty_bos_list():
    assert cu([], 10, 100, pad=1) == [0, 10]
    assert cu([], 10, 4, pad=4) == [0, 4, 8, 10]
    assert cu([], 8, 4, pad=4) == [0, 4, 8, 8]


def test_cu_seqlens_rejects_unsorted_or_out_of_range():
    with pytest.raises(ValueError, match="strictly increasing"):
        cu([4, 2], 10, 4)
    with pytest.raises(ValueError, match="strictly increasing"):
        cu([10], 10, 4)


def stream(length, bos, base):
    """Unique non-BOS ids (base + position) with BOS at the given positions."""
    values = base + np.arange(length)
    values[list(bos)] = BOS
    return values


@pytest.fixture
def three_shards(tmp_path):
    """Shard 0 starts with a BOS; shards 1 and 2 start with the tail of a document."""
    data = [stream(100, [0, 10, 37, 60], 1000), stream(90, [5, 40], 2000), stream(70, [3, 50], 3000)]
    for k, values in enumerate(data):
        shards.write_shard(tmp_path / f"train_{k:06d}.bin", values)
    return tmp_path, data


def loader(path, rank=0, world_size=2, n=9, seq_len=8, vocab_size=VOCAB):
    return PackingLoader(path, tokens_per_rank=n, seq_len=seq_len, rank=rank, world_size=world_size, bos_id=BOS,
                         vocab_size=vocab_size)  # fmt: skip


def windows(path, steps, world_size=2, n=9):
    """Per step, the concatenated slabs of all ranks (inputs + last target) and rank 0's batch."""
    ranks = [loader(path, r, world_size, n) for r in range(world_size)]
    out = []
    for _ in range(steps):
        batches = [ld.next_batch() for ld in ranks]
        out.append(np.concatenate([np.append(b.inputs[0].numpy(), b.targets[0, -1].item()) for b in batches]))
    return out, ranks


def test_rank_slabs_are_consecutive_disjoint_windows_and_targets_shift(three_shards):
    path, data = three_shards
    out, _ = windows(path, 5)
    for step, window in enumerate(out):  # shard 0: cursor 0, 20, ..., 80 (80 + 20 = 100 fits)
        np.testing.assert_array_equal(window, data[0][20 * step : 20 * step + 20])
    batch = loader(path, rank=1).next_batch()
    assert batch.inputs.shape == batch.targets.shape == (1, 9) and batch.inputs.dtype == torch.int64
    np.testing.assert_array_equal(batch.inputs[0, 1:], batch.targets[0, :-1])
    np.testing.assert_array_equal(batch.inputs[0], data[0][10:19])


def test_cu_seqlens_of_a_slab_follow_its_bos(three_shards):
    path, _ = three_shards
    ld = loader(path, rank=1, n=9, seq_len=4)
    first = ld.next_batch()  # rank 1 slab starts at 10 = BOS
    assert first.cu_seqlens.tolist()[:4] == [0, 4, 8, 9]
    second = ld.next_batch()  # slab 30..39, inputs 30..38, BOS at 37 -> offset 7
    assert second.cu_seqlens.tolist()[:4] == [0, 4, 7, 9]
    assert second.cu_seqlens.numel() == 64


def test_shard_advance_drops_the_tail_and_starts_at_the_first_bos(three_shards):
    path, data = three_shards
    out, ranks = windows(path, 9)
    np.testing.assert_array_equal(out[5], data[1][5:25])  # shard 1's first BOS is at 5
    np.testing.assert_array_equal(out[8], data[1][65:85])
    assert ranks[0].state_dict()["shard"] == 1


def test_wraps_to_shard_0_after_the_last_and_counts_epochs(three_shards):
    path, data = three_shards
    out, ranks = windows(path, 15)
    np.testing.assert_array_equal(out[9], data[2][3:23])
    np.testing.assert_array_equal(out[11], data[2][43:63])
    np.testing.assert_array_equal(out[12], data[0][0:20])
    assert ranks[0].epoch == 1 and ranks[0].state_dict()["shard"] == 0


def test_deterministic(three_shards):
    path, _ = three_shards
    a, _ = windows(path, 20)
    b, _ = windows(path, 20)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


def test_state_dict_resume_reproduces_the_next_batches(three_shards):
    path, _ = three_shards
    for skip in (0, 4, 7, 13):
        first = loader(path, rank=1)
        for _ in range(skip):
            first.next_batch()
        state = first.state_dict()
        expected = [first.next_batch() for _ in range(10)]
        resumed = loader(path, rank=1)
        resumed.load_state_dict(state)
        for want, got in zip(expected, (resumed.next_batch() for _ in range(10)), strict=True):
            assert torch.equal(want.inputs, got.inputs) and torch.equal(want.targets, got.targets)
            assert torch.equal(want.cu_seqlens, got.cu_seqlens)
        assert resumed.state_dict() == first.state_dict()


def test_resume_with_other_geometry_is_refused(three_shards):
    path, _ = three_shards
    state = loader(path).state_dict()
    with pytest.raises(ValueError, match="same shards, world size and batch geometry"):
        loader(path, n=8).load_state_dict(state)


def test_too_small_shard_names_the_knobs(tmp_path):
    shards.write_shard(tmp_path / "train_000000.bin", stream(100, [0], 2))
    shards.write_shard(tmp_path / "train_000001.bin", stream(10, [0], 2))
    shards.write_shard(tmp_path / "train_000002.bin", stream(100, [0], 2))
    with pytest.raises(shards.ShardError, match=r"train_000001\.bin: the shard holds 10 tokens.*shard_tokens") as err:
        loader(tmp_path)
    assert "tokens_per_rank" in str(err.value) and "2 * (9 + 1) = 20" in str(err.value)


def test_first_bos_too_late_is_an_error(tmp_path):
    shards.write_shard(tmp_path / "train_000000.bin", stream(100, [95], 2))
    with pytest.raises(shards.ShardError, match="holds 5 tokens after its first BOS"):
        loader(tmp_path)


def test_short_last_shard_is_skipped(tmp_path):
    data = stream(40, [0, 25], 2)
    shards.write_shard(tmp_path / "train_000000.bin", data)
    shards.write_shard(tmp_path / "train_000001.bin", stream(15, [0], 500))
    out, ranks = windows(tmp_path, 3)
    np.testing.assert_array_equal(out[2], data[:20])
    assert ranks[0].epoch == 1


def test_no_shards_and_no_bos(tmp_path):
    with pytest.raises(shards.ShardError, match="no train_"):
        loader(tmp_path)
    shards.write_shard(tmp_path / "train_000000.bin", stream(100, [], 2))
    with pytest.raises(shards.ShardError, match="no BOS"):
        loader(tmp_path)


def test_token_outside_the_vocabulary_names_the_shard_and_the_fix(three_shards):
    path, data = three_shards
    first = r"train_000000\.bin: token id 1099 is out of range for vocab_size 1000; .* re-run `dvc repro tokenize`"
    with pytest.raises(shards.ShardError, match=first):
        loader(path, vocab_size=1000)  # the first shard, read by the constructor
    bad = data[1].copy()
    bad[30] = VOCAB + 7
    shards.write_shard(path / "train_000001.bin", bad)
    ld = loader(path)
    with pytest.raises(shards.ShardError, match=rf"train_000001\.bin: token id {VOCAB + 7} .* vocab_size {VOCAB}"):
        for _ in range(6):  # shard 0 serves 5 windows; the 6th needs shard 1 (read in the background)
            ld.next_batch()


def test_batch_to_device():
    b = Batch(torch.zeros(1, 3, dtype=torch.int64), torch.ones(1, 3, dtype=torch.int64), torch.zeros(64).int())
    moved = b.to("cpu")
    assert torch.equal(moved.targets, b.targets) and moved.cu_seqlens.dtype == torch.int32


def test_next_shard_is_read_in_the_background_and_batches_are_unchanged(three_shards, monkeypatch):
    """Every shard after the first is read and scanned on the prefetch thread before the step that needs it; the
    batches equal those of a loader without prefetch, through two epochs."""
    import threading

    path, _ = three_shards
    loads: list[tuple[object, int, str]] = []
    load = PackingLoader._load

    def recording(self, index):
        loads.append((self, index, threading.current_thread().name))
        return load(self, index)

    monkeypatch.setattr(PackingLoader, "_load", recording)
    fetching = loader(path)
    plain = PackingLoader(path, tokens_per_rank=9, seq_len=8, rank=0, world_size=2, bos_id=BOS, vocab_size=VOCAB,
                          prefetch=False)  # fmt: skip
    for _ in range(30):
        a, b = fetching.next_batch(), plain.next_batch()
        for x, y in zip((a.inputs, a.targets, a.cu_seqlens), (b.inputs, b.targets, b.cu_seqlens), strict=True):
            assert torch.equal(x, y)
    assert fetching.epoch == plain.epoch == 2
    mine = [(index, thread) for who, index, thread in loads if who is fetching]
    assert mine[0] == (0, "MainThread")  # the constructor
    assert all(thread.startswith("shard-prefetch") for _, thread in mine[1:])  # every switch was prefetched
    assert [index for index, _ in mine[1:6]] == [1, 2, 0, 1, 2]


@needs("dvclive")  # its former file imported test_train.py, which skipped without dvclive
def test_loader_cap_changes_segments_not_tokens(tmp_path):
    values = 1000 + np.arange(400)
    values[[0, 150, 170]] = 1  # BOS: documents of 150, 20 and 230 tokens
    shards.write_shard(tmp_path / "train_000000.bin", values)
    ld = PackingLoader(tmp_path, tokens_per_rank=199, seq_len=64, rank=0, world_size=1, bos_id=1, vocab_size=2000)
    state = ld.state_dict()
    seen = {}
    for seq_len in (64, 16, 64):
        ld.load_state_dict(state)
        ld.set_seq_len(seq_len)
        batches = [ld.next_batch() for _ in range(2)]
        lengths = [np.diff(np.unique(b.cu_seqlens.numpy())) for b in batches]
        assert all(b.inputs.shape == (1, 199) for b in batches)
        assert max(x.max() for x in lengths) == seq_len  # documents longer than the cap are cut at it
        seen.setdefault(seq_len, []).append(([b.inputs for b in batches], sum(x.size for x in lengths)))
    (inputs64, segs64), (inputs16, segs16) = seen[64][0], seen[16][0]
    assert all(torch.equal(a, b) for a, b in zip(inputs64, inputs16, strict=True))  # same tokens per step
    assert segs16 > segs64  # ... in more, shorter segments
    assert seen[64][1][1] == segs64  # back to 64: the same segments as before
    with pytest.raises(ValueError, match="seq_len must be positive"):
        ld.set_seq_len(0)
