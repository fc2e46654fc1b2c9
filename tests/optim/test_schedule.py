"""pgolf.optim.schedule: the LR multiplier, the momentum warm-up, progress and the recurrence switch."""

import pytest

from pgolf.optim.schedule import looping_active, lr_multiplier, momentum_at, progress


def test_lr_multiplier_record_values():
    assert lr_multiplier(0.1, 0.85, 0.1) == 1.0
    assert lr_multiplier(0.15, 0.85, 0.1) == pytest.approx(1.0)
    assert lr_multiplier(0.5, 0.85, 0.1) == pytest.approx(0.5 / 0.85)
    assert lr_multiplier(0.95, 0.85, 0.1) == 0.1
    assert lr_multiplier(0.9, 0.85, 0.0) == pytest.approx(0.1 / 0.85)
    assert lr_multiplier(0.99, 0.0, 0.1) == 1.0 and lr_multiplier(1.5, 0.0, 0.0) == 1.0
    grid = [lr_multiplier(i / 1000, 0.85, 0.1) for i in range(1201)]
    assert all(b <= a for a, b in zip(grid, grid[1:], strict=False))
    assert min(grid) == 0.1 and max(grid) == 1.0


def test_momentum_at_record_values():
    assert momentum_at(0, 0.92, 0.97, 1500) == 0.92
    assert momentum_at(750, 0.92, 0.97, 1500) == pytest.approx(0.945)
    assert momentum_at(1500, 0.92, 0.97, 1500) == 0.97 and momentum_at(3000, 0.92, 0.97, 1500) == 0.97
    assert momentum_at(0, 0.92, 0.97, 0) == 0.97


def test_progress_and_looping():
    assert progress(299.75, 10, 599.5, 20000) == 0.5
    assert progress(123.0, 50, 0.0, 200) == 0.25
    with pytest.raises(ValueError):
        progress(1.0, 1, 0.0, 0)
    assert not looping_active(0.3499, 0.35) and looping_active(0.35, 0.35)
    assert looping_active(0.0, 0.0)
    assert not looping_active(1.0, 1.0) and not looping_active(5.0, 1.5)
