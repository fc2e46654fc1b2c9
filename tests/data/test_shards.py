"""Shard format: round trip, exact validation errors, sidecar alignment, streaming writer; the manifest fails
closed (missing, unreadable, hashless, a listed file missing: an error naming the file and `dvc repro tokenize`)."""

import json

import numpy as np
import pytest

from pgolf.data import shards
from pgolf.errors import PgolfError
from pgolf.score.bpb import load_val


def test_round_trip(tmp_path):
    values = np.random.default_rng(0).integers(0, 2**16, size=10_001)
    path = tmp_path / "val_000000.bin"
    shards.write_shard(path, values)
    assert path.stat().st_size == 1024 + 2 * values.size
    np.testing.assert_array_equal(shards.read_shard(path), values)
    np.testing.assert_array_equal(shards.read_shard(path, mmap=True), values)
    header = np.fromfile(path, dtype="<i4", count=256)
    assert list(header[:3]) == [20240520, 1, values.size] and not header[3:].any()


def test_empty_shard_round_trips(tmp_path):
    shards.write_shard(tmp_path / "a.bin", np.array([], dtype=np.uint16))
    assert shards.read_shard(tmp_path / "a.bin").size == 0


@pytest.fixture
def shard(tmp_path):
    path = tmp_path / "train_000000.bin"
    shards.write_shard(path, np.arange(100))
    return path


def _patch(path, offset, data):
    raw = bytearray(path.read_bytes())
    raw[offset : offset + len(data)] = data
    path.write_bytes(bytes(raw))


def test_bad_magic(shard):
    _patch(shard, 0, np.array([12345], dtype="<i4").tobytes())
    with pytest.raises(shards.ShardError, match=r"train_000000\.bin: bad magic 12345"):
        shards.read_shard(shard)


def test_bad_version(shard):
    _patch(shard, 4, np.array([7], dtype="<i4").tobytes())
    with pytest.raises(shards.ShardError, match="unsupported shard version 7"):
        shards.read_shard(shard)


def test_truncated_payload(shard):
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(shards.ShardError, match=r"train_000000\.bin: truncated: header says 100 entries"):
        shards.read_shard(shard)


def test_truncated_header(shard):
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(shards.ShardError, match="truncated header"):
        shards.read_shard(shard)


def test_wrong_size_trailing_bytes(shard):
    shard.write_bytes(shard.read_bytes() + b"\0\0")
    with pytest.raises(shards.ShardError, match="trailing bytes"):
        shards.read_header(shard)


def test_wrong_count_in_header(shard):
    _patch(shard, 8, np.array([101], dtype="<i4").tobytes())
    with pytest.raises(shards.ShardError, match="header says 101 entries"):
        shards.read_shard(shard)


def test_nonzero_reserved_header(shard):
    _patch(shard, 40, b"\x01")
    with pytest.raises(shards.ShardError, match="reserved fields"):
        shards.read_shard(shard)


def test_vocab_out_of_range(shard):
    with pytest.raises(shards.ShardError, match="token id 99 is out of range for vocab_size 50"):
        shards.read_shard(shard, vocab_size=50)
    assert shards.read_shard(shard, vocab_size=100).size == 100


def test_writer_refuses_values_over_uint16(tmp_path):
    with pytest.raises(shards.ShardError, match="does not fit this format"):
        shards.write_shard(tmp_path / "x.bin", np.array([0, 65536]))
    with pytest.raises(shards.ShardError):
        shards.write_shard(tmp_path / "x.bin", np.array([-1]))
    assert not (tmp_path / "x.bin").exists()


def test_missing_file_names_it(tmp_path):
    with pytest.raises(shards.ShardError, match="nope.bin: cannot read"):
        shards.read_shard(tmp_path / "nope.bin")


def test_writer_splits_exactly_and_sidecar_stays_aligned(tmp_path):
    rng = np.random.default_rng(1)
    tokens = shards.ShardWriter(tmp_path, "val", 1000)
    sidecar = shards.ShardWriter(tmp_path, "val_bytes", 1000)
    pieces = [rng.integers(0, 500, size=n) for n in (10, 999, 1, 2500, 7)]
    for piece in pieces:
        tokens.append(piece)
        sidecar.append(piece % 7)
    assert [shards.read_header(p) for p in tokens.close()] == [1000, 1000, 1000, 517]
    sidecar.close()
    values, counts = shards.load_val_with_bytes(tmp_path)
    np.testing.assert_array_equal(values, np.concatenate(pieces))
    np.testing.assert_array_equal(counts, np.concatenate(pieces) % 7)


def test_glob_never_mixes_sidecar_with_tokens(tmp_path):
    shards.write_shard(tmp_path / "val_000000.bin", np.arange(5))
    shards.write_shard(tmp_path / "val_bytes_000000.bin", np.ones(5))
    assert [p.name for p in shards.shard_paths(tmp_path, "val")] == ["val_000000.bin"]
    assert [p.name for p in shards.shard_paths(tmp_path, "val_bytes")] == ["val_bytes_000000.bin"]


def test_misaligned_sidecar_is_rejected(tmp_path):
    shards.write_shard(tmp_path / "val_000000.bin", np.arange(5))
    shards.write_shard(tmp_path / "val_bytes_000000.bin", np.ones(4))
    with pytest.raises(shards.ShardError, match="misaligned"):
        shards.load_val_with_bytes(tmp_path)


def test_index_gap_is_rejected(tmp_path):
    shards.write_shard(tmp_path / "train_000000.bin", np.arange(5))
    shards.write_shard(tmp_path / "train_000002.bin", np.arange(5))
    with pytest.raises(shards.ShardError, match="gap"):
        shards.shard_paths(tmp_path, "train")


def _manifest(shard_dir):
    return json.loads((shard_dir / "manifest.json").read_text())


def test_a_missing_shard_manifest_is_an_error_not_a_skipped_check(fresh_build):
    tokenizer, shard_dir = fresh_build
    load_val(shard_dir, tokenizer)  # intact: loads
    (shard_dir / "manifest.json").unlink()
    with pytest.raises(PgolfError, match=r"shards/manifest.json: missing.*dvc repro tokenize"):
        load_val(shard_dir, tokenizer)


@pytest.mark.parametrize("content", ["{not json", "[]", '{"byte_count": "sidecar"}'])
def test_an_unreadable_or_hashless_shard_manifest_is_an_error(fresh_build, content):
    tokenizer, shard_dir = fresh_build
    (shard_dir / "manifest.json").write_text(content)
    with pytest.raises(PgolfError, match=r"manifest.json: (unreadable|holds no sha256).*dvc repro tokenize"):
        load_val(shard_dir, tokenizer)


def test_a_missing_val_shard_or_sidecar_is_an_error(fresh_build):
    tokenizer, shard_dir = fresh_build
    kinds = ["val"] + (["val_bytes"] if _manifest(shard_dir)["byte_count"] == "sidecar" else [])
    for kind in kinds:
        last = shards.shard_paths(shard_dir, kind)[-1]
        saved = last.read_bytes()
        last.unlink()
        with pytest.raises(PgolfError, match=rf"{last.name}: listed in manifest.json but missing"):
            load_val(shard_dir, tokenizer)
        last.write_bytes(saved)
