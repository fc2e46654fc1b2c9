"""Tokenize: val shards decode to the val documents and the sidecar counts their bytes exactly."""

import numpy as np
from conftest import EDGE_DOCS, build_tokenizer, data_cfg, tokenize, tokenizer_cfg, write_corpus

from pgolf.data import caseops, docs, encode, shards
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc


def _split_docs(tokens: np.ndarray, bos: int) -> list[np.ndarray]:
    starts = np.flatnonzero(tokens == bos)
    assert starts[0] == 0, "the stream must open with BOS"
    return np.split(tokens, starts[1:])


def test_val_shards_decode_to_the_val_documents(built):
    docs_dir, tok_dir, shard_dir = built
    meta = tok.read_meta(tok_dir)
    sp = tok.load(tok_dir)
    tokens = shards.load_shards(shard_dir, "val", vocab_size=meta["vocab_size"])
    decoded = []
    for doc in _split_docs(tokens, meta["bos_id"]):
        text = sp.decode(doc[1:].tolist())
        decoded.append(caseops.decode(text) if meta["caseops"] else text)
    assert decoded == [d.text for d in docs.read_docs(docs_dir, "val")]
    assert meta["eos_id"] not in tokens


def test_train_shards_hold_every_train_document(built):
    docs_dir, tok_dir, shard_dir = built
    meta = tok.read_meta(tok_dir)
    tokens = shards.load_shards(shard_dir, "train")
    assert len(shards.shard_paths(shard_dir, "train")) > 1, "shard_tokens must split the stream"
    train = list(docs.read_docs(docs_dir, "train"))
    pieces = _split_docs(tokens, meta["bos_id"])
    assert len(pieces) == len(train)
    sp = tok.load(tok_dir)
    first = sp.decode(pieces[0][1:].tolist())
    assert (caseops.decode(first) if meta["caseops"] else first) == train[0].text


def test_sidecar_counts_the_original_bytes_exactly(built):
    docs_dir, tok_dir, shard_dir = built
    meta = tok.read_meta(tok_dir)
    tokens, counts = shards.load_val_with_bytes(shard_dir)
    val = list(docs.read_docs(docs_dir, "val"))
    assert int(counts.sum()) == sum(len(d.text.encode("utf-8")) for d in val)
    starts = np.flatnonzero(tokens == meta["bos_id"])
    assert (counts[starts] == 0).all()
    per_doc = [int(c.sum()) for c in np.split(counts, starts[1:])]
    assert per_doc == [len(d.text.encode("utf-8")) for d in val]
    if meta["caseops"]:
        sp = tok.load(tok_dir)
        operators = np.isin(tokens, [sp.piece_to_id(op) for op in caseops.OPERATORS])
        esc, escaped, pending = sp.piece_to_id(caseops.ESC), np.zeros(len(tokens), dtype=bool), False
        for i, t in enumerate(tokens.tolist()):  # ESC escapes the next token only
            escaped[i], pending = pending, (t == esc and not pending)
        assert operators.any() and escaped.any()
        assert (counts[operators & ~escaped] == 0).all()  # case markers stand for no original byte
        assert (counts[operators & escaped] == 3).all()  # a literal operator character is 3 bytes of text


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


def test_sidecar_is_exact_for_a_lossy_normalizer(tmp_path, corpus):
    """nmt_nfkc drops and folds characters; the counts still sum to the original bytes."""
    cfg = tokenizer_cfg(normalization="nmt_nfkc", remove_extra_whitespaces=True, caseops=True)
    build_tokenizer(cfg, tmp_path / "tok", corpus, 2)
    manifest = tokenize(corpus, tmp_path / "tok", data_cfg(), tmp_path / "shards")
    expected = sum(len(d.text.encode()) for d in docs.read_docs(corpus, "val"))
    assert manifest["splits"]["val"]["sidecar_bytes"] == expected
    assert "roundtrip_failures" not in manifest["splits"]["val"]  # lossy: no round-trip claim


def test_doc_byte_counts_attributes_dropped_bytes_forward():
    # tokens ending at byte offsets 3 and 5 of an 8-byte text: the last token takes the tail
    counts = encode.doc_byte_counts("abcdefgh", "abcdefgh", [3, 5], use_caseops=False)
    assert counts.tolist() == [3, 5]
    encoded = caseops.encode("Ab")  # TITLE a b: the operator's 3 bytes weigh nothing
    assert encode.doc_byte_counts("Ab", encoded, [3, 4, 5], use_caseops=True).tolist() == [0, 1, 1]


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
