"""pgolf.optim.averaging: EMA against a float64 recurrence, Tight SWA's mean, schedule and resume."""

import pytest
import torch
from torch import Tensor, nn

from pgolf.optim.averaging import COUNT_KEY, EMA, AveragingError, TightSWA


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.emb = nn.Parameter(torch.zeros(4, 3, dtype=torch.bfloat16))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))


def _set_weights(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g))


def test_ema_matches_float64_recurrence():
    model = _Tiny()
    _set_weights(model, 0)
    ema = EMA(model, decay=0.9)
    ref = {k: v.double().clone() for k, v in model.state_dict().items() if v.is_floating_point()}
    assert set(ema.state_dict()) == set(ref) and "steps" not in ema.state_dict()
    for seed in range(1, 6):
        _set_weights(model, seed)
        ema.update(model)
        for k, v in model.state_dict().items():
            if k in ref:
                ref[k] = 0.9 * ref[k] + 0.1 * v.double()
    for k, v in ema.state_dict().items():
        assert v.dtype == torch.float32
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-6, atol=1e-6)
    saved = {k: v.clone() for k, v in ema.state_dict().items()}
    other = EMA(_Tiny(), decay=0.9)
    other.load_state_dict(saved)
    for k in saved:
        torch.testing.assert_close(other.state_dict()[k], saved[k])


def test_tight_swa_mean_and_schedule():
    model = _Tiny()
    swa = TightSWA(model, every=5, start_below_lr=0.2)
    with pytest.raises(AveragingError, match="no snapshot"):
        swa.state_dict()
    taken, snaps = [], []
    for step, lr_mul in [(5, 0.5), (6, 0.1), (10, 0.19), (15, 0.2), (20, 0.05), (25, 0.1)]:
        _set_weights(model, step)
        if swa.maybe_update(model, step, lr_mul):
            taken.append(step)
            snaps.append({k: v.double() for k, v in model.state_dict().items() if v.is_floating_point()})
    assert taken == [10, 20, 25] and swa.count == 3
    avg = swa.state_dict()
    for k, v in avg.items():
        torch.testing.assert_close(v.double(), sum(s[k] for s in snaps) / 3, rtol=1e-6, atol=1e-6)
    resumed = TightSWA(_Tiny(), every=5, start_below_lr=0.2)
    saved = swa.resume_state()
    assert saved[COUNT_KEY] == 3 and set(saved) == set(avg) | {COUNT_KEY}
    resumed.load_state_dict({k: v.clone() if isinstance(v, Tensor) else v for k, v in saved.items()})
    assert resumed.count == 3
    for k, v in resumed.state_dict().items():
        torch.testing.assert_close(v, avg[k])
