"""pgolf.eval.sliding: exactly-once sliding windows over the selected documents."""

from __future__ import annotations

import numpy as np
import pytest

from pgolf.score.documents import split_documents
from pgolf.score.scorer import document_windows
from pgolf.score.scores import TokenRecorder
from tests.helpers.config import eval_cfg, score_cfg
from tests.helpers.eval import BOS, random_texts, run, text_val, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(("seq_len", "stride"), [(8, 3), (8, 8), (24, 5), (5, 1)])
def test_sliding_scores_every_target_of_the_selected_documents_exactly_once(seq_len, stride):
    val = text_val(random_texts(6, 1, 40, seed=1))
    docs = split_documents(val.tokens, BOS, 4)
    windows = document_windows(docs, seq_len, stride)
    counts = np.zeros(len(val.tokens), dtype=int)
    for start, length, lo, hi in windows:
        assert 0 <= lo < hi <= length <= seq_len
        doc = next(d for d in docs if d.start <= start < d.end - 1)
        assert start + length <= doc.end - 1, "a window crosses its document"
        counts[start + 1 + lo : start + 1 + hi] += 1
        if lo > 0:  # a later window scores its last `stride` (or fewer) targets with full context
            assert hi - lo <= stride and length == seq_len
    expected = np.zeros_like(counts)
    expected[1 : docs[-1].end] = 1
    assert np.array_equal(counts, expected)
    cfg = eval_cfg(sliding={"seq_len": seq_len, "stride": stride})
    recorder = TokenRecorder(len(val.tokens))
    result = run("sliding", tiny_model(), val, cfg, recorder, score=score_cfg(docs=4))
    assert np.array_equal(recorder.counts, expected) and result.totals.tokens == expected.sum()
