"""pgolf.data.provenance: the validation documents' hashes; training documents are checked against them."""

import hashlib
import json
import re

import pytest

from pgolf.data import provenance
from pgolf.data.docs import sha256_file
from pgolf.errors import PgolfError
from tests.helpers.data import BOS, VAL_DOCS, doc_digest, doc_stream, hash_val, write_manifest_of, write_shards


@pytest.fixture
def val_dir(tmp_path):
    """Val shards of VAL_DOCS, cut inside document 1 (so a validation document spans two shards)."""
    stream = doc_stream(VAL_DOCS)
    write_shards(tmp_path / "shards", "val", [stream[:7], stream[7:]])
    hash_val(tmp_path / "shards")
    return tmp_path / "shards"


def _check(val_dir, train: list[list[int]], what: str = "train") -> dict:
    paths = write_shards(val_dir / "train_shards", "train", train)
    return provenance.check_training_documents(val_dir, paths, BOS, what=what)


def test_val_hashes_file_lists_each_document_in_order(val_dir):
    path = val_dir / provenance.VAL_HASHES_FILE
    assert path.read_text().splitlines() == [doc_digest(d).hex() for d in VAL_DOCS]
    entry = provenance.write_val_hashes(val_dir, BOS)
    assert entry == {
        "algorithm": "blake2b-128 of uint16 token ids",
        "documents": len(VAL_DOCS),
        "file": "val_hashes.txt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    assert provenance.read_val_hashes(val_dir) == {doc_digest(d): i for i, d in enumerate(VAL_DOCS)}


def test_disjoint_training_data_passes(val_dir, capsys):
    train = [[BOS, 5, 6, BOS, 7], [8, 9, BOS, 300, 65535, 2, 9], [BOS]]
    paths = write_shards(val_dir / "train_shards", "train", train)
    report = provenance.check_training_documents(val_dir, paths, BOS, what="calibrate", progress=True)
    assert report == {"train_documents": 4, "val_documents": len(VAL_DOCS), "overlap": 0, "passed": True}
    assert re.search(r"calibrate: 100%.*3/3 \[.*shard", capsys.readouterr().err)


def test_a_validation_document_in_one_shard_is_named(val_dir):
    train = [doc_stream([[10, 11], [12]]), doc_stream([[13], VAL_DOCS[2], [14]])]
    with pytest.raises(provenance.ProvenanceError) as err:
        _check(val_dir, train, what="calibrate")
    message = str(err.value)
    assert message.startswith("calibrate: document 1 of ")
    assert "train_shards/train_000001.bin (token offset 2, 1 tokens)" in message
    assert "validation document 2 (line 3 of val_hashes.txt" in message
    assert "must not contain validation documents" in message and "#2127" in message


def test_a_validation_document_spanning_two_shards_is_found(val_dir):
    stream = doc_stream([[10, 11], VAL_DOCS[1], [12]])  # val doc 1 occupies stream[3:9]
    with pytest.raises(provenance.ProvenanceError, match="validation document 1 ") as err:
        _check(val_dir, [stream[:5], stream[5:]])
    assert "document 1 of " in str(err.value)
    assert "train_000000.bin (token offset 3, 5 tokens, continuing into the next shard)" in str(err.value)


def test_a_validation_document_spanning_three_shards_is_found(val_dir):
    stream = doc_stream([[10], VAL_DOCS[3]])  # the middle shard holds no BOS at all
    with pytest.raises(provenance.ProvenanceError, match=r"train_000000\.bin \(token offset 2, 4 tokens, contin"):
        _check(val_dir, [stream[:4], stream[4:6], stream[6:], []])


def test_documents_ending_at_a_shard_end_are_checked(val_dir):
    with pytest.raises(provenance.ProvenanceError, match="validation document 3 "):
        _check(val_dir, [doc_stream([[10], [11]]), doc_stream([[12], VAL_DOCS[3]])])  # the very last document
    with pytest.raises(provenance.ProvenanceError, match="validation document 0 ") as err:
        _check(val_dir, [doc_stream([[10], VAL_DOCS[0]]), doc_stream([[12]])])  # the next shard opens with BOS
    assert "train_000000.bin (token offset 2, 3 tokens)" in str(err.value)


def test_documents_that_differ_in_one_token_pass(val_dir):
    near = [[*VAL_DOCS[1][:-1], 10], VAL_DOCS[1][:-1], [*VAL_DOCS[1], 10], [BOS + 1, *VAL_DOCS[3][1:]]]
    stream = doc_stream(near)
    assert _check(val_dir, [stream[:6], stream[6:]])["train_documents"] == len(near)


def test_shards_that_do_not_open_with_bos_are_refused(val_dir):
    with pytest.raises(provenance.ProvenanceError, match=r"train_000000\.bin: opens with 2 tokens before"):
        _check(val_dir, [[10, 11, BOS, 12]])


def test_missing_or_malformed_hash_file_names_the_file_and_the_fix(val_dir, tmp_path):
    path = val_dir / provenance.VAL_HASHES_FILE
    path.write_text(path.read_text() + "zz" * 16 + "\n")
    record = lambda: write_manifest_of(val_dir, val_hashes={"sha256": sha256_file(path)})  # noqa: E731
    record()  # a malformed file the manifest agrees with: its lines are checked too
    with pytest.raises(PgolfError, match=r"val_hashes\.txt: line 5 is not a 32-digit hex digest.*dvc repro tokenize"):
        provenance.read_val_hashes(val_dir)
    digits = doc_digest([5]).hex()
    for bad in (digits[:-2], f"{digits[:16]} {digits[16:]}"):  # short; spaced (bytes.fromhex would skip the space)
        path.write_text(bad + "\n")
        record()
        with pytest.raises(PgolfError, match="line 1 is not"):
            provenance.read_val_hashes(val_dir)
    path.unlink()
    with pytest.raises(PgolfError, match=r"val_hashes\.txt: validation document hashes missing.*dvc repro tokenize"):
        provenance.check_training_documents(val_dir, [], BOS, what="train")


def _manifest(shard_dir):
    return json.loads((shard_dir / "manifest.json").read_text())


def test_the_validation_document_hashes_are_checked_against_the_manifest(fresh_build):
    _, shard_dir = fresh_build
    hashes = shard_dir / provenance.VAL_HASHES_FILE
    assert provenance.read_val_hashes(shard_dir)
    hashes.write_text(hashes.read_text().splitlines()[0] + "\n")  # a stale list that hides documents
    with pytest.raises(PgolfError, match=r"val_hashes.txt: its content changed .*dvc repro tokenize"):
        provenance.read_val_hashes(shard_dir)
    manifest = _manifest(shard_dir)
    manifest["val_hashes"].pop("sha256")
    (shard_dir / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(PgolfError, match=r"records no sha256 of val_hashes.txt"):
        provenance.read_val_hashes(shard_dir)
    hashes.unlink()
    with pytest.raises(PgolfError, match=r"val_hashes.txt: validation document hashes missing.*dvc repro tokenize"):
        provenance.read_val_hashes(shard_dir)


def _tokenized(val_dir, train: list[list[int]]) -> dict:
    """Train shards of ``train`` beside the val shards, and the manifest the tokenize stage writes for them."""
    write_shards(val_dir, "train", train)
    entry = provenance.write_val_hashes(val_dir, BOS)
    write_manifest_of(val_dir, val_hashes=entry)
    manifest = {**_manifest(val_dir), "provenance": provenance.check_once(val_dir, BOS, entry)}
    (val_dir / "manifest.json").write_text(json.dumps(manifest))
    return manifest


def test_the_stages_trust_the_tokenize_check_for_the_shards_it_hashed(val_dir, monkeypatch):
    """Documents are hashed once (tokenize); train and calibrate verify each shard's sha256 and hash no document."""
    manifest = _tokenized(val_dir, [[BOS, 5, 6, BOS, 7], [8, 9, BOS, 300]])
    assert manifest["provenance"] == {"algorithm": provenance.ALGORITHM, "train_documents": 3,
                                      "val_documents": len(VAL_DOCS), "overlap": 0, "passed": True}  # fmt: skip

    def no_document_hashing(*args, **kwargs):
        raise AssertionError("a stage re-hashed the training documents")

    monkeypatch.setattr(provenance, "_shard_documents", no_document_hashing)
    report = provenance.recorded_check(val_dir, manifest, what="train")
    assert report["passed"] and report["train_documents"] == 3 and report["verified"] == "sha256 of 2 train shards"
    write_shards(val_dir, "train", [[BOS, 5, 6, BOS, 7], [8, 9, BOS, *VAL_DOCS[0]]])  # changed after tokenize
    with pytest.raises(PgolfError, match=r"train_000001\.bin: its content changed after the tokenize stage"):
        provenance.recorded_check(val_dir, manifest, what="train")


def test_a_finding_of_the_tokenize_check_stops_every_stage_that_reads_the_shards(val_dir):
    manifest = _tokenized(val_dir, [[BOS, 5, 6], [BOS, *VAL_DOCS[1], BOS, 7]])
    assert manifest["provenance"]["passed"] is False
    for stage in ("train", "calibrate"):
        with pytest.raises(provenance.ProvenanceError, match=rf"^{stage}: document 0 of .*train_000001\.bin .*"
                                                             r"equals validation document 1 "):  # fmt: skip
            provenance.recorded_check(val_dir, manifest, what=stage)


def test_a_manifest_without_the_check_fails_closed(val_dir):
    manifest = _tokenized(val_dir, [[BOS, 5, 6]])
    manifest.pop("provenance")
    with pytest.raises(PgolfError, match=r"manifest\.json: records no check of the training documents .*tokenize"):
        provenance.recorded_check(val_dir, manifest, what="train")
