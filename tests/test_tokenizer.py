"""Tokenizer: trains on training documents only; lossless options; byte lookup tables."""

import pytest
from conftest import build_tokenizer, tokenizer_cfg, write_corpus

from pgolf.data import caseops
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc

MARKER = "zyzzogetonical"


def _pieces(directory, word):
    return tok.load(directory).encode(" " + word, out_type=str)


@pytest.mark.parametrize("marker_in", ["val", "train"])
def test_validation_text_never_reaches_training(tmp_path, speeches, marker_in):
    """A word repeated throughout val must not become a piece; the control (in train) shows it would."""
    train = [Doc(f"t/{i}", text[:20000]) for i, (_, text) in enumerate(speeches[:6])]
    val = [Doc(f"v/{i}", f"{MARKER} " * 400) for i in range(3)]
    if marker_in == "train":
        train, val = train + val, [Doc("v/x", "plain")]
    corpus = write_corpus(tmp_path / "docs", train, val)
    build_tokenizer(tokenizer_cfg(vocab_size=600), tmp_path / "tok", corpus, 2)
    pieces = _pieces(tmp_path / "tok", MARKER)
    assert (len(pieces) > 3) if marker_in == "val" else (len(pieces) == 1)


def test_build_reads_only_train_documents(tmp_path, speeches, monkeypatch):
    seen = []

    def spy(texts, cfg, num_threads):
        seen.extend(texts)
        raise RuntimeError("stop")

    monkeypatch.setattr(tok, "train", spy)
    corpus = write_corpus(tmp_path / "docs", [Doc("t/0", "train text")], [Doc("v/0", "val text")])
    with pytest.raises(RuntimeError, match="stop"):
        build_tokenizer(tokenizer_cfg(), tmp_path / "tok", corpus, 1)
    assert seen == ["train text"]


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
