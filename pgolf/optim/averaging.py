"""Weight averaging over training: an exponential moving average (the record) and Tight SWA (PR #374).

Both keep fp32 copies of every floating entry of ``model.state_dict()`` (parameters and persistent floating
buffers), keyed by name, and can write their average back into the model cast to each live tensor's dtype.

References:
    * openai/parameter-golf PR #1855 ``train_gpt.py`` L3468-3474, L3519-3521, L3544-3549 (EMA, decay 0.9965,
      every step, fp32, no bias correction).
    * openai/parameter-golf PR #374 (Tight SWA: every 50 steps once the LR multiplier is below 0.2, plain mean).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.errors import PgolfError

COUNT_KEY = "__swa_count__"
"""Key of the snapshot count in ``TightSWA.resume_state()``, beside the running sums keyed by state-dict name."""


class AveragingError(PgolfError, RuntimeError):
    """An average that cannot be formed or loaded (no snapshot, mismatched keys)."""


def _float_entries(model: nn.Module) -> dict[str, Tensor]:
    """The floating-point entries of ``model.state_dict()``, detached (they share storage with the model)."""
    return {name: t.detach() for name, t in model.state_dict().items() if torch.is_floating_point(t)}


def _fp32_clone(state: dict[str, Tensor]) -> dict[str, Tensor]:
    return {name: t.detach().to(torch.float32, copy=True) for name, t in state.items()}


def _check_keys(have: dict[str, Tensor], got: dict[str, Tensor], what: str) -> None:
    if have.keys() != got.keys():
        missing, extra = sorted(have.keys() - got.keys()), sorted(got.keys() - have.keys())
        raise AveragingError(f"{what}: keys differ (missing {missing[:5]}, unexpected {extra[:5]})")


class EMA:
    """Exponential moving average ``ema <- decay ema + (1 - decay) param`` of every floating state entry, in fp32."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self._state = _fp32_clone(_float_entries(model))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the model's current weights into the average (call after every optimizer step)."""
        live = _float_entries(model)
        _check_keys(self._state, live, "EMA.update")
        names = list(self._state)
        ema = [self._state[n] for n in names]
        torch._foreach_mul_(ema, self.decay)
        torch._foreach_add_(ema, [live[n].float() for n in names], alpha=1.0 - self.decay)

    def after_step(self, model: nn.Module, step: int, lr_mul: float) -> None:
        """The averager's part of an optimizer step (the training loop's one call for EMA and SWA alike)."""
        self.update(model)

    def state_dict(self) -> dict[str, Tensor]:
        """The fp32 averages by state-dict name (live references: clone before mutating)."""
        return dict(self._state)

    def resume_state(self) -> dict[str, Tensor]:
        """What ``load_state_dict`` takes back on resume: the averages."""
        return self.state_dict()

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore averages saved with ``state_dict()`` (resume); kept in fp32 on the current devices."""
        _check_keys(self._state, state, "EMA.load_state_dict")
        for name, t in self._state.items():
            t.copy_(state[name].to(dtype=torch.float32, device=t.device))


class TightSWA:
    """Plain mean of weight snapshots taken every ``every`` steps once the LR multiplier is below a threshold.

    The running sum is kept in fp32 for every entry; the record summed its bf16 embedding in bf16, which this
    class does not reproduce. The sum lives on the model's devices.
    """

    def __init__(self, model: nn.Module, every: int, start_below_lr: float) -> None:
        if every < 1:
            raise ValueError(f"TightSWA every must be >= 1, got {every}")
        self.every = every
        self.start_below_lr = start_below_lr
        self._sum = {name: torch.zeros_like(t, dtype=torch.float32) for name, t in _float_entries(model).items()}
        if COUNT_KEY in self._sum:
            raise AveragingError(f"TightSWA: the model has a state entry named {COUNT_KEY!r}, the resume count key")
        self._count = 0

    @property
    def count(self) -> int:
        """Number of snapshots in the running sum."""
        return self._count

    @torch.no_grad()
    def maybe_update(self, model: nn.Module, step: int, lr_mul: float) -> bool:
        """Add a snapshot if ``lr_mul < start_below_lr`` and ``step % every == 0``; return whether one was taken."""
        if not (lr_mul < self.start_below_lr and step % self.every == 0):
            return False
        live = _float_entries(model)
        _check_keys(self._sum, live, "TightSWA.maybe_update")
        names = list(self._sum)
        torch._foreach_add_([self._sum[n] for n in names], [live[n].float() for n in names])
        self._count += 1
        return True

    def after_step(self, model: nn.Module, step: int, lr_mul: float) -> None:
        """The averager's part of an optimizer step: a snapshot when due (:meth:`maybe_update`)."""
        self.maybe_update(model, step, lr_mul)

    def state_dict(self) -> dict[str, Tensor]:
        """The fp32 average of the snapshots; raises AveragingError when none was taken."""
        if self._count == 0:
            raise AveragingError(
                "TightSWA: no snapshot was taken, so there is nothing to average: the LR multiplier never went "
                f"below start_below_lr={self.start_below_lr} on a step divisible by every={self.every}. Raise "
                "start_below_lr, lower every, or lengthen the warmdown (warmdown_frac / min_lr)."
            )
        return {name: s / self._count for name, s in self._sum.items()}

    def resume_state(self) -> dict[str, Tensor | int]:
        """What ``load_state_dict`` takes back: the fp32 running sums by name plus ``COUNT_KEY: count`` (an int)."""
        return {**self._sum, COUNT_KEY: self._count}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor | int]) -> None:
        """Restore the running sums and count saved with ``resume_state()`` (resume)."""
        count = state.get(COUNT_KEY)
        if not isinstance(count, int) or count < 0:
            raise AveragingError(f"TightSWA.load_state_dict: '{COUNT_KEY}' must be an int >= 0, got {count!r}")
        sums = {name: t for name, t in state.items() if name != COUNT_KEY}
        _check_keys(self._sum, sums, "TightSWA.load_state_dict")
        for name, t in self._sum.items():
            t.copy_(sums[name].to(dtype=torch.float32, device=t.device))  # type: ignore[union-attr]
        self._count = count
