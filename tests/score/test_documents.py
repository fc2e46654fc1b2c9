"""pgolf.score.documents: documents partition the targets, and score.docs takes a prefix."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf.errors import PgolfError
from pgolf.score.documents import split_documents
from tests.helpers.eval import BOS, random_texts, text_val

pytestmark = pytest.mark.usefixtures("one_thread")


def test_documents_partition_the_targets_and_score_docs_takes_a_prefix():
    val = text_val(random_texts(7, 1, 30))
    docs = split_documents(val.tokens, BOS)
    covered = np.concatenate([np.arange(d.start + 1, d.end) for d in docs])
    assert np.array_equal(covered, np.arange(1, len(val.tokens)))
    assert split_documents(val.tokens, BOS, 3) == docs[:3]
    with pytest.raises(PgolfError, match="start with BOS"):
        split_documents(val.tokens[1:], BOS)
