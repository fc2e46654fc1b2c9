"""pgolf.train.config: a bad seq_schedule or re-warm-up is a config error naming the key."""

import pytest

from pgolf.config import ConfigError
from tests.helpers.config import train_cfg

pytest.importorskip("dvclive")  # its former file imported tests/test_train.py, which skipped without dvclive


@pytest.mark.parametrize(
    ("schedule", "seq_len", "message"),
    [
        ([(64, 0.5), (32, 0.5), (16, 1.0)], 64, r"train.seq_schedule\[\*\].until must be strictly increasing"),
        ([(64, 0.0), (32, 1.0)], 64, r"until must be strictly increasing in \(0, 1\]"),
        ([(32, 0.5), (64, 0.9)], 64, r"train.seq_schedule\[-1\].until must be 1.0"),
        ([(32, 0.5), (64, 1.5)], 64, r"train.seq_schedule\[1\].until: must be <= 1.0 \(got 1.5\)"),
        ([(32, 0.5), (48, 1.0)], 64, r"train.seq_len \(64\) must equal the largest train.seq_schedule\[\*\].seq_len"),
        ([(0, 0.5), (64, 1.0)], 64, r"train.seq_schedule\[0\].seq_len: must be > 0 \(got 0\)"),
    ],
)
def test_bad_schedules_are_config_errors_naming_the_key(schedule, seq_len, message):
    stages = [{"seq_len": n, "until": u} for n, u in schedule]
    with pytest.raises(ConfigError, match=message):
        train_cfg(seq_len=seq_len, seq_schedule=stages)


def test_negative_rewarm_steps_is_a_config_error():
    with pytest.raises(ConfigError, match=r"train.seq_warmup_steps: must be >= 0 \(got -1\)"):
        train_cfg(seq_warmup_steps=-1)
