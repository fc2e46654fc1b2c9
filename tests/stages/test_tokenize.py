"""The tokenize stage: the sidecar exact for a lossy normalizer, a round-trip failure detected, the validation
documents' hashes recorded (for adopted shards too) and catching a copied document."""

import hashlib
import json

import pytest

from pgolf.data import docs, fingerprint, provenance, shards
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc
from tests.helpers.config import data_cfg, tokenizer_cfg
from tests.helpers.data import (
    BOS,
    EDGE_DOCS,
    VAL_DOCS,
    build_tokenizer,
    doc_digest,
    doc_stream,
    tokenize,
    write_corpus,
    write_shards,
)


def test_sidecar_is_exact_for_a_lossy_normalizer(tmp_path, corpus):
    """nmt_nfkc drops and folds characters; the counts still sum to the original bytes."""
    cfg = tokenizer_cfg(normalization="nmt_nfkc", remove_extra_whitespaces=True, caseops=True)
    build_tokenizer(cfg, tmp_path / "tok", corpus, 2)
    manifest = tokenize(corpus, tmp_path / "tok", data_cfg(), tmp_path / "shards")
    expected = sum(len(d.text.encode()) for d in docs.read_docs(corpus, "val"))
    assert manifest["splits"]["val"]["sidecar_bytes"] == expected
    assert "roundtrip_failures" not in manifest["splits"]["val"]  # lossy: no round-trip claim


def test_roundtrip_failure_is_detected(tmp_path, speeches):
    """A lossy tokenizer flagged as lossless must fail the tokenize stage's decode check."""
    train = [Doc("t/0", speeches[0][1])]
    val = [Doc("v/0", EDGE_DOCS[0])]
    corpus = write_corpus(tmp_path / "docs", train, val)
    build_tokenizer(tokenizer_cfg(vocab_size=300, byte_fallback=False), tmp_path / "tok", corpus, 1)
    meta_path = tmp_path / "tok" / tok.META_FILE
    meta_path.write_text(meta_path.read_text().replace('"byte_fallback": false', '"byte_fallback": true'))
    val_text = "unknown glyphs ☃ ☄"
    corpus = write_corpus(tmp_path / "docs", train, [Doc("v/0", val_text)])
    try:
        tokenize(corpus, tmp_path / "tok", data_cfg(), tmp_path / "shards")
    except AssertionError as err:
        assert "do not decode to themselves" in str(err)
    else:
        raise AssertionError("a lossy encoding passed the round-trip check")


def _cached_corpus(tmp_path):
    """A documents folder as the fineweb_cached source leaves it (published shards, no text) + a tokenizer meta."""
    docs_dir, tok_dir = tmp_path / "docs", tmp_path / "tok"
    val = doc_stream(VAL_DOCS)
    write_shards(docs_dir / "shards", "val", [val[:7], val[7:]])
    write_shards(docs_dir / "shards", "train", [doc_stream([[10, 11], [12]]), doc_stream([[13, 14]])])
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
    assert hashes.splitlines() == [doc_digest(d).hex() for d in VAL_DOCS]
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
    assert manifest["fingerprint"] == fingerprint.fingerprint(out) and "published" not in manifest["fingerprint"]


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
    assert not manifest["provenance"]["passed"] and "validation document 1 " in manifest["provenance"]["finding"]
    paths = shards.shard_paths(out, "train")
    assert len(paths) > 1
    with pytest.raises(provenance.ProvenanceError, match="validation document 1 "):
        provenance.check_training_documents(out, paths, manifest["bos_id"], what="train")
    build_tokenizer(tokenizer_cfg(vocab_size=320), tmp_path / "tok", write_corpus(tmp_path / "docs", train, val), 1)
    assert tokenize(tmp_path / "docs", tmp_path / "tok", data_cfg(shard_tokens=300), out)["provenance"]["passed"]
    assert provenance.check_training_documents(out, shards.shard_paths(out, "train"), BOS, what="train")["passed"]
