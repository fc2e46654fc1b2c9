"""pgolf.train.seq_schedule, progressive training context: the stage at a progress, the LR re-warm-up, the
compile warm-up pairs."""

import pytest

from pgolf.train.config import SeqStage
from pgolf.train.seq_schedule import active_seq_len, rewarm_factor, warmup_pairs

pytest.importorskip("dvclive")  # its former file imported tests/test_train.py, which skipped without dvclive


FRONTIER = [SeqStage(seq_len=1024, until=0.1), SeqStage(seq_len=2048, until=0.7), SeqStage(seq_len=3072, until=1.0)]


@pytest.mark.parametrize(
    ("frac", "seq_len"),
    [(0.0, 1024), (0.05, 1024), (0.1, 1024), (0.1000001, 2048), (0.5, 2048), (0.7, 2048), (0.7000001, 3072),
     (0.999, 3072), (1.0, 3072)],
)  # fmt: skip
def test_stage_is_the_first_whose_until_is_not_passed(frac, seq_len):
    assert active_seq_len(FRONTIER, frac, default=7) == seq_len


def test_no_stages_is_the_default_length():
    assert active_seq_len([], 0.0, default=512) == active_seq_len([], 0.99, default=512) == 512


def test_rewarm_ramp_values():
    assert [rewarm_factor(step, 100, 32) for step in (100, 101, 115, 130, 131, 500)] == [
        1 / 32, 2 / 32, 16 / 32, 31 / 32, 1.0, 1.0]  # fmt: skip
    assert rewarm_factor(100, None, 32) == 1.0  # no change yet
    assert rewarm_factor(100, 100, 0) == rewarm_factor(100, 100, -1) == 1.0  # off


def test_warmup_pairs_cover_what_each_stage_meets():
    # 1024 runs below 0.35 only, 2048 spans it, 3072 lies above it
    assert warmup_pairs(FRONTIER, 0.35, 3072) == [(1024, False), (2048, False), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 0.1, 3072) == [(1024, False), (1024, True), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 0.0, 3072) == [(1024, True), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 1.0, 3072) == [(1024, False), (2048, False), (3072, False)]
    assert warmup_pairs([], 1.0, 512) == [(512, False), (512, True)]  # what the warm-up always built
