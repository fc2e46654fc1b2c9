"""pgolf.eval.multi_phase (#1802): every target re-scored in every pass."""

import pytest

from tests.helpers.config import eval_cfg
from tests.helpers.eval import random_texts, recorded, run, text_val, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_multi_phase_re_scores_every_target_in_every_pass():
    val = text_val(random_texts(6, 10, 60, seed=8))
    cfg = eval_cfg()
    result, recorder = recorded("multi_phase", tiny_model(), val, cfg)
    sliding = run("sliding", tiny_model(), val, cfg)
    assert result.passes == 3 and [p["phase"] for p in result.phases] == [0, 1, 2]
    assert result.phases[0]["val_bpb"] == pytest.approx(sliding.totals.val_bpb, rel=1e-9)
    assert result.phases[-1]["val_bpb"] == result.totals.val_bpb != result.phases[0]["val_bpb"]
    assert recorder.counts[1:].min() == 3  # every target scored in each of the 3 phases
