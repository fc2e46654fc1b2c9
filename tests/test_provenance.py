"""Provenance: tokenize records the validation documents' hashes; training documents are checked against them."""

import hashlib
import json
import re
import struct

import numpy as np
import pytest
from conftest import build_tokenizer, data_cfg, tokenize, tokenizer_cfg, write_corpus

from pgolf.data import docs, provenance, shards
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc
from pgolf.errors import PgolfError

BOS = 1
VAL_DOCS = [[5, 6, 7], [300, 65535, 2, 9, 9], [8], [40, 41, 42, 43]]


def _ref(ids: list[int]) -> bytes:
    """The digest computed independently: blake2b-128 of the ids packed as uint16 little-endian, no BOS."""
    return hashlib.blake2b(struct.pack(f"<{len(ids)}H", *ids), digest_size=16).digest()


def _stream(documents: list[list[int]]) -> list[int]:
    return [t for d in documents for t in [BOS, *d]]


def _write(directory, kind: str, pieces: list[list[int]]) -> list:
    """Shards ``{kind}_000000.bin``, ... holding the given token lists (cut anywhere, like the shard writer)."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / shards.shard_name(kind, i) for i in range(len(pieces))]
    for path, piece in zip(paths, pieces, strict=True):
        shards.write_shard(path, np.asarray(piece, dtype=np.int64))
    return paths


@pytest.fixture
def val_dir(tmp_path):
    """Val shards of VAL_DOCS, cut inside document 1 (so a validation document spans two shards)."""
    stream = _stream(VAL_DOCS)
    _write(tmp_path / "shards", "val", [stream[:7], stream[7:]])
    provenance.write_val_hashes(tmp_path / "shards", BOS)
    return tmp_path / "shards"


def _check(val_dir, train: list[list[int]], what: str = "train") -> dict:
    paths = _write(val_dir / "train_shards", "train", train)
    return provenance.check_training_documents(val_dir, paths, BOS, what=what)


def test_document_hashes_are_blake2b_of_each_documents_ids():
    documents = [[5, 6, 7], [], [300, 65535, 2], [BOS + 1]]
    stream = np.asarray(_stream(documents), dtype=np.uint16)
    assert provenance.document_hashes(stream, BOS) == [_ref(d) for d in documents]
    assert provenance.document_hashes(stream.astype(np.int64), BOS) == [_ref(d) for d in documents]
    assert provenance.document_hashes(np.zeros(0, dtype=np.uint16), BOS) == []
    with pytest.raises(ValueError, match="must open with BOS"):
        provenance.document_hashes(stream[1:], BOS)


def test_val_hashes_file_lists_each_document_in_order(val_dir):
    path = val_dir / provenance.VAL_HASHES_FILE
    assert path.read_text().splitlines() == [_ref(d).hex() for d in VAL_DOCS]
    entry = provenance.write_val_hashes(val_dir, BOS)
    assert entry == {
        "algorithm": "blake2b-128 of uint16 token ids",
        "documents": len(VAL_DOCS),
        "file": "val_hashes.txt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert provenance.read_val_hashes(val_dir) == {_ref(d): i for i, d in enumerate(VAL_DOCS)}


def test_disjoint_training_data_passes(val_dir, capsys):
    train = [[BOS, 5, 6, BOS, 7], [8, 9, BOS, 300, 65535, 2, 9], [BOS]]
    paths = _write(val_dir / "train_shards", "train", train)
    report = provenance.check_training_documents(val_dir, paths, BOS, what="calibrate", progress=True)
    assert report == {"train_documents": 4, "val_documents": len(VAL_DOCS), "overlap": 0, "passed": True}
    assert re.search(r"calibrate: 100%.*3/3 \[.*shard", capsys.readouterr().err)


def test_a_validation_document_in_one_shard_is_named(val_dir):
    train = [_stream([[10, 11], [12]]), _stream([[13], VAL_DOCS[2], [14]])]
    with pytest.raises(provenance.ProvenanceError) as err:
        _check(val_dir, train, what="calibrate")
    message = str(err.value)
    assert message.startswith("calibrate: document 1 of ")
    assert "train_shards/train_000001.bin (token offset 2, 1 tokens)" in message
    assert "validation document 2 (line 3 of val_hashes.txt" in message
    assert "must not contain validation documents" in message and "#2127" in message


def test_a_validation_document_spanning_two_shards_is_found(val_dir):
    stream = _stream([[10, 11], VAL_DOCS[1], [12]])  # val doc 1 occupies stream[3:9]
    with pytest.raises(provenance.ProvenanceError, match="validation document 1 ") as err:
        _check(val_dir, [stream[:5], stream[5:]])
    assert "document 1 of " in str(err.value)
    assert "train_000000.bin (token offset 3, 5 tokens, continuing into the next shard)" in str(err.value)


def test_a_validation_document_spanning_three_shards_is_found(val_dir):
    stream = _stream([[10], VAL_DOCS[3]])  # the middle shard holds no BOS at all
    with pytest.raises(provenance.ProvenanceError, match=r"train_000000\.bin \(token offset 2, 4 tokens, contin"):
        _check(val_dir, [stream[:4], stream[4:6], stream[6:], []])


def test_documents_ending_at_a_shard_end_are_checked(val_dir):
    with pytest.raises(provenance.ProvenanceError, match="validation document 3 "):
        _check(val_dir, [_stream([[10], [11]]), _stream([[12], VAL_DOCS[3]])])  # the very last document
    with pytest.raises(provenance.ProvenanceError, match="validation document 0 ") as err:
        _check(val_dir, [_stream([[10], VAL_DOCS[0]]), _stream([[12]])])  # the next shard opens with BOS
    assert "train_000000.bin (token offset 2, 3 tokens)" in str(err.value)


def test_documents_that_differ_in_one_token_pass(val_dir):
    near = [[*VAL_DOCS[1][:-1], 10], VAL_DOCS[1][:-1], [*VAL_DOCS[1], 10], [BOS + 1, *VAL_DOCS[3][1:]]]
    stream = _stream(near)
    assert _check(val_dir, [stream[:6], stream[6:]])["train_documents"] == len(near)


def test_shards_that_do_not_open_with_bos_are_refused(val_dir):
    with pytest.raises(provenance.ProvenanceError, match=r"train_000000\.bin: opens with 2 tokens before"):
        _check(val_dir, [[10, 11, BOS, 12]])


def test_missing_or_malformed_hash_file_names_the_file_and_the_fix(val_dir, tmp_path):
    path = val_dir / provenance.VAL_HASHES_FILE
    path.write_text(path.read_text() + "zz" * 16 + "\n")
    with pytest.raises(PgolfError, match=r"val_hashes\.txt: line 5 is not a 32-digit hex digest.*dvc repro tokenize"):
        provenance.read_val_hashes(val_dir)
    digits = _ref([5]).hex()
    for bad in (digits[:-2], f"{digits[:16]} {digits[16:]}"):  # short; spaced (bytes.fromhex would skip the space)
        path.write_text(bad + "\n")
        with pytest.raises(PgolfError, match="line 1 is not"):
            provenance.read_val_hashes(val_dir)
    path.unlink()
    with pytest.raises(PgolfError, match=r"val_hashes\.txt: validation document hashes missing.*dvc repro tokenize"):
        provenance.check_training_documents(val_dir, [], BOS, what="train")


def _cached_corpus(tmp_path):
    """A documents folder as the fineweb_cached source leaves it (published shards, no text) + a tokenizer meta."""
    docs_dir, tok_dir = tmp_path / "docs", tmp_path / "tok"
    val = _stream(VAL_DOCS)
    _write(docs_dir / "shards", "val", [val[:7], val[7:]])
    _write(docs_dir / "shards", "train", [_stream([[10, 11], [12]]), _stream([[13, 14]])])
    docs.write_manifest(docs_dir, {"source": "fineweb_cached"})
    tok_dir.mkdir()
    meta = {"vocab_size": 2**16, "bos_id": BOS, "caseops": False, "model_sha256": "0" * 64}
    (tok_dir / tok.META_FILE).write_text(json.dumps(meta))
    return docs_dir, tok_dir


def test_tokenize_records_val_hashes_for_adopted_shards(tmp_path):
    docs_dir, tok_dir = _cached_corpus(tmp_path)
    manifest = tokenize(docs_dir, tok_dir, data_cfg(source="fineweb_cached"), tmp_path / "shards")
    out = tmp_path / "shards"
    hashes = (out / "val_hashes.txt").read_text()
    assert hashes.splitlines() == [_ref(d).hex() for d in VAL_DOCS]
    assert manifest["val_hashes"] == {
        "algorithm": provenance.ALGORITHM,
        "documents": len(VAL_DOCS),
        "file": "val_hashes.txt",
        "sha256": hashlib.sha256(hashes.encode()).hexdigest(),
    }
    assert json.loads((out / docs.MANIFEST).read_text())["val_hashes"] == manifest["val_hashes"]
    assert {"source", "vocab_size", "bos_id", "splits", "byte_count"} <= manifest.keys()
    report = provenance.check_training_documents(out, shards.shard_paths(out, "train"), BOS, what="train")
    assert report["train_documents"] == 3


def test_tokenize_records_val_hashes_that_catch_a_copied_document(tmp_path):
    """Encoded text end to end: a training document with a validation document's text is caught."""
    words = " ".join(f"w{i % 37}{'abcde'[i % 5]}" for i in range(4000))
    val = [Doc("v/0", "Ünïcödé validation text, one of a kind."), Doc("v/1", "The second validation document.\n")]
    train = [Doc(f"t/{i}", words[i * 500 : (i + 1) * 500]) for i in range(8)]
    corpus = write_corpus(tmp_path / "docs", [*train[:4], Doc("t/copy", val[1].text), *train[4:]], val)
    build_tokenizer(tokenizer_cfg(vocab_size=320), tmp_path / "tok", corpus, 1)
    out = tmp_path / "shards"
    manifest = tokenize(corpus, tmp_path / "tok", data_cfg(shard_tokens=300), out)
    assert manifest["val_hashes"]["documents"] == 2
    paths = shards.shard_paths(out, "train")
    assert len(paths) > 1
    with pytest.raises(provenance.ProvenanceError, match="validation document 1 "):
        provenance.check_training_documents(out, paths, manifest["bos_id"], what="train")
    build_tokenizer(tokenizer_cfg(vocab_size=320), tmp_path / "tok", write_corpus(tmp_path / "docs", train, val), 1)
    tokenize(tmp_path / "docs", tmp_path / "tok", data_cfg(shard_tokens=300), out)
    assert provenance.check_training_documents(out, shards.shard_paths(out, "train"), BOS, what="train")["passed"]
