"""pgolf.data.encode: val shards decode to the val documents, train shards hold every train document, and the
sidecar counts their bytes exactly."""

import numpy as np

from pgolf.data import caseops, docs, encode, shards
from pgolf.data import tokenizer as tok


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


def test_doc_byte_counts_attributes_dropped_bytes_forward():
    # tokens ending at byte offsets 3 and 5 of an 8-byte text: the last token takes the tail
    counts = encode.doc_byte_counts("abcdefgh", "abcdefgh", [3, 5], use_caseops=False)
    assert counts.tolist() == [3, 5]
    encoded = caseops.encode("Ab")  # TITLE a b: the operator's 3 bytes weigh nothing
    assert encode.doc_byte_counts("Ab", encoded, [3, 4, 5], use_caseops=True).tolist() == [0, 1, 1]
