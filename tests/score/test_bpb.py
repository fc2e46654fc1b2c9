"""pgolf.score.bpb: the formula, and validation loading from the sidecar or the tokenizer LUTs (with the val
files' hashes checked)."""

import json
import math
import shutil

import numpy as np
import pytest

from pgolf.data import docs, shards
from pgolf.data import tokenizer as tok
from pgolf.errors import PgolfError
from pgolf.score.bpb import BpbTotals, load_val, loss_to_bpb
from pgolf.score.scorer import scored_documents
from pgolf.score.scores import EvalContext
from pgolf.score.unigram import score_token_model
from tests.helpers.config import score_cfg
from tests.helpers.score import UNIFORM


def test_formula_by_hand():
    assert loss_to_bpb(8 * math.log(2), 4) == pytest.approx(2.0, rel=1e-15)
    totals = BpbTotals(3.0 + 1.5, 2 + 1, 5 + 0)  # a BOS target adds nats and a token, no bytes
    assert (totals.nats, totals.tokens, totals.bytes) == (4.5, 3, 5)
    assert totals.val_loss == 1.5
    assert totals.val_bpb == pytest.approx(4.5 / (math.log(2) * 5), rel=1e-15)
    with pytest.raises(ValueError, match="positive byte count"):
        loss_to_bpb(1.0, 0)
    assert totals.all_reduce() == totals and totals.all_reduce() is not totals  # not distributed: a copy


def _without_sidecar(shard_dir, out):
    """A copy of the shards as published ones come: no val_bytes files, LUT byte count in the manifest."""
    out.mkdir()
    for path in shards.shard_paths(shard_dir, "val"):
        shutil.copy(path, out / path.name)
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    listed = {name: digest for name, digest in manifest["sha256"].items() if (out / name).is_file()}
    (out / "manifest.json").write_text(json.dumps({**manifest, "byte_count": "tokenizer_luts", "sha256": listed}))
    return out


def test_load_val_sidecar_counts_the_documents_bytes_and_luts_agree(built, tmp_path):
    docs_dir, tok_dir, shard_dir = built
    meta = tok.read_meta(tok_dir)
    val = load_val(shard_dir, tok_dir)
    text_bytes = sum(len(d.text.encode("utf-8")) for d in docs.read_docs(docs_dir, "val"))
    assert val.byte_count == "sidecar" and val.target_bytes[0] == 0
    assert int(val.target_bytes.sum()) == text_bytes
    np.testing.assert_array_equal(val.tokens, shards.load_shards(shard_dir, "val"))
    cfg = score_cfg(docs=0, seq_len=64, batch_windows=8)
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
    with pytest.raises(PgolfError, match=r"3 val shards but 0 val_bytes shards.*dvc repro tokenize"):
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


def _manifest(shard_dir):
    return json.loads((shard_dir / "manifest.json").read_text())


def test_shards_of_another_tokenizer_or_without_its_hash_are_refused(fresh_build):
    tokenizer, shard_dir = fresh_build
    manifest = _manifest(shard_dir)
    for made_by in ("0" * 64, None):
        changed = {**manifest, "tokenizer_sha256": made_by}
        (shard_dir / "manifest.json").write_text(json.dumps(changed))
        with pytest.raises(PgolfError, match=r"the shards were made by tokenizer .*dvc repro tokenize"):
            load_val(shard_dir, tokenizer)
