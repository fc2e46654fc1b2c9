"""pgolf.data.tokenizer: training sentences, lossless options, byte lookup tables (which agree with the
sidecar on a lossless tokenizer)."""

import pytest

from pgolf.data import caseops, shards
from pgolf.data import tokenizer as tok
from tests.helpers.config import tokenizer_cfg


def test_training_sentences_cut_cap_and_transform():
    cfg = tokenizer_cfg(caseops=True, max_sentence_bytes=64, max_train_chars=500)
    docs = ["Line One\n" * 30, "Second DOC " * 40]
    sentences = list(tok.training_sentences(docs, cfg))
    assert all(len(s.encode()) <= 64 for s in sentences)
    assert sum(len(s) for s in sentences) == 500
    assert caseops.TITLE in sentences[0] and sentences[0].endswith("\n")
    uncapped = list(tok.training_sentences(docs, tokenizer_cfg(max_sentence_bytes=64)))
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


def test_vocab_over_uint16_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not fit the uint16 shard format"):
        tok.train(["x"], tokenizer_cfg(vocab_size=70000), num_threads=1)


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
