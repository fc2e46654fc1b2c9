"""The training schedule as pure functions: progress, LR multiplier, Muon momentum ramp, recurrence switch.

Record values (PR #1855): warmdown_frac 0.85 and min_lr 0.1 (flat 1.0 until frac 0.15, linear decay to the 0.1
floor at frac 0.915), momentum 0.92 -> 0.97 over 1500 steps, depth recurrence on from frac 0.35. There is no LR
warmup.

References:
    * openai/parameter-golf PR #1855 ``train_gpt.py`` L3351-3395 (progress, LR multiplier, momentum warmup) and
      L3510-3517 (recurrence switch).
"""

from __future__ import annotations


def progress(elapsed_s: float, step: int, max_wallclock_s: float, iterations: int) -> float:
    """Training progress ``frac``: ``elapsed_s / max_wallclock_s`` with a wall-clock budget, else ``step / iterations``.

    ``elapsed_s`` should count only time spent in the training loop (no validation, no compile warm-up), measured
    just before the step. ``max_wallclock_s <= 0`` means no wall clock.
    """
    if max_wallclock_s > 0:
        return elapsed_s / max_wallclock_s
    if iterations <= 0:
        raise ValueError(f"progress needs max_wallclock_s > 0 or iterations > 0, got {max_wallclock_s}, {iterations}")
    return step / iterations


def lr_multiplier(frac: float, warmdown_frac: float, min_lr: float) -> float:
    """The LR multiplier at progress ``frac``, shared by every optimizer group (``lr = base_lr * multiplier``).

    1 while ``frac < 1 - warmdown_frac``, then ``max((1 - frac) / warmdown_frac, min_lr)``: a linear decay to 0
    at frac 1, floored at ``min_lr``. ``warmdown_frac == 0`` means no warmdown (always 1).
    """
    if not 0.0 <= warmdown_frac <= 1.0:
        raise ValueError(f"warmdown_frac must be in [0, 1], got {warmdown_frac}")
    if warmdown_frac == 0.0 or frac < 1.0 - warmdown_frac:
        return 1.0
    return max((1.0 - frac) / warmdown_frac, min_lr)


def momentum_at(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Muon momentum at optimizer step ``step``: linear from ``start`` (step 0) to ``end`` (step ``warmup_steps``).

    Constant ``end`` afterwards, and from the start when ``warmup_steps == 0``.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return end
    t = step / warmup_steps
    return (1.0 - t) * start + t * end


def looping_active(frac: float, enable_at: float) -> bool:
    """Whether depth recurrence runs at progress ``frac``: ``frac >= enable_at``.

    ``enable_at = 0`` loops from the first step; ``enable_at >= 1`` disables the switch (never loops, whatever
    frac). Once on it stays on, since frac only grows.
    """
    return enable_at < 1.0 and frac >= enable_at
