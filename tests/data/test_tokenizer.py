"""pgolf.data.tokenizer: training sentences, lossless options, byte lookup tables (which agree with the
sidecar on a lossless tokenizer)."""

import pytest

from pgolf.config import ConfigError
from pgolf.data import caseops, shards, tokenizer_train
from pgolf.data import tokenizer as tok
from pgolf.errors import PgolfError
from tests.helpers.config import tokenizer_cfg


def test_training_sentences_cut_cap_and_transform():
    cfg = tokenizer_cfg(caseops=True, max_sentence_bytes=64, max_train_chars=500)
    docs = ["Line One\n" * 30, "Second DOC " * 40]
    sentences = list(tokenizer_train.training_sentences(docs, cfg))
    assert all(len(s.encode()) <= 64 for s in sentences)
    assert sum(len(s) for s in sentences) == 500
    assert caseops.TITLE in sentences[0] and sentences[0].endswith("\n")
    uncapped = list(tokenizer_train.training_sentences(docs, tokenizer_cfg(max_sentence_bytes=64)))
    assert "".join(uncapped) == "".join(docs)


def test_meta_and_lookup_tables(built):
    _, tok_dir, _ = built
    meta = tok.read_meta(tok_dir)
    sp = tok.load(tok_dir)
    assert meta["vocab_size"] == sp.get_piece_size() == 512 and meta["bos_id"] == 1
    luts = tok.load_luts(tok_dir)
    assert luts["base_bytes"].shape == (512,)
    for i in range(sp.get_piece_size()):
        if sp.is_control(i) or sp.is_unknown(i):
            assert luts["is_boundary"][i] and luts["base_bytes"][i] == 0
        elif sp.is_byte(i):
            assert luts["base_bytes"][i] == 1 and not luts["is_boundary"][i]
    space = sp.piece_to_id(tok.SPACE)
    assert luts["has_leading_space"][space] and luts["base_bytes"][space] == 0
    if meta["caseops"]:
        assert all(sp.piece_to_id(op) != sp.unk_id() for op in caseops.OPERATORS)
        assert sp.encode(caseops.TITLE) == [sp.piece_to_id(caseops.TITLE)]


def test_vocab_over_uint16_is_refused_at_load():
    with pytest.raises(ConfigError, match=r"tokenizer.vocab_size: must be <= 65536 \(got 70000\)"):
        tokenizer_cfg(vocab_size=70000)  # the shards store uint16 token ids


def test_lookup_tables_agree_with_sidecar_on_a_lossless_tokenizer(built):
    """Without CaseOps the LUT convention differs from exact counts only by a leading space right after BOS."""
    docs_dir, tok_dir, shard_dir = built
    if tok.read_meta(tok_dir)["caseops"]:
        return  # the LUT method overcounts CaseOps operators by design (3 bytes each); not used there
    tokens, counts = shards.load_val_with_bytes(shard_dir)
    luts = tok.load_luts(tok_dir)
    charged = tok.lut_bytes(tokens, luts)
    after_bos = tokens[:-1] == tok.read_meta(tok_dir)["bos_id"]
    dropped = int((luts["has_leading_space"][tokens[1:]] & after_bos).sum())
    assert dropped >= 1  # the edge documents open with spaces
    assert int(charged.sum()) + dropped == int(counts[1:].sum())


@pytest.mark.parametrize("name", ["meta.json", "byte_luts.safetensors"])
def test_a_missing_tokenizer_file_is_an_error_naming_it(fresh_build, name):
    tokenizer, shard_dir = fresh_build
    (tokenizer / name).unlink()
    with pytest.raises(PgolfError, match=rf"{name}: .*dvc repro tokenizer"):
        tok.read_meta(tokenizer) if name == "meta.json" else tok.load_luts(tokenizer)


def test_a_tokenizer_meta_that_is_not_one_is_an_error(fresh_build):
    tokenizer, _ = fresh_build
    (tokenizer / "meta.json").write_text('{"vocab_size": 512}')
    with pytest.raises(PgolfError, match=r"meta.json: not a tokenizer meta.*dvc repro tokenizer"):
        tok.read_meta(tokenizer)
