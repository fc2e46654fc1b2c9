"""pgolf.model.config: shapes and ranges are config errors naming the key."""

import pytest

from tests.helpers.config import model_cfg


def test_bad_shapes_are_config_errors():
    with pytest.raises(Exception, match="num_heads must be a multiple of model.num_kv_heads"):
        model_cfg(num_kv_heads=3)
    with pytest.raises(Exception, match="loop_start..loop_end"):
        model_cfg(loop_end=9)


def test_leaky_slope_is_range_checked():
    from pgolf.config import ConfigError

    with pytest.raises(ConfigError, match="model.mlp_leaky_slope"):
        model_cfg(mlp_leaky_slope=1.5)
