"""Progressive training context as pure functions: which attention segment cap a step uses, the LR re-warm-up
after each change, and the (seq_len, looped) pairs the compile warm-up must build.

A schedule is a list of stages ``(seq_len, until)``, ``until`` strictly increasing and the last one 1.0. At
training progress ``frac`` (the measure of :func:`pgolf.optim.schedule.progress`) the active stage is the first
one whose ``until`` has not been passed, i.e. the first with ``frac <= until``: ``1024@0.1, 2048@0.7, 3072@1.0``
gives 1024 on [0, 0.1], 2048 on (0.1, 0.7] and 3072 after. The cap only changes how documents are cut into
attention segments; a step reads the same number of tokens whatever the stage.

References:
    * openai/parameter-golf PR #2014 ``train_gpt.py`` (``current_train_seq_len``, the re-warm-up in the training
      loop and the per-stage compile shape warm-up); #2014.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Stage(Protocol):
    seq_len: int
    until: float


def active_seq_len(stages: Sequence[Stage], frac: float, default: int) -> int:
    """The segment cap at progress ``frac``: the first stage with ``frac <= until`` (``default`` without stages;
    past the last ``until`` the last stage stays)."""
    for stage in stages:
        if frac <= stage.until:
            return stage.seq_len
    return stages[-1].seq_len if stages else default


def rewarm_factor(step: int, changed_at: int | None, warmup_steps: int) -> float:
    """The LR re-warm-up after a segment-cap change at step ``changed_at``: ``(step - changed_at + 1) /
    warmup_steps`` capped at 1, so the change step itself trains at ``1 / warmup_steps``. 1 when
    ``warmup_steps == 0`` or before any change."""
    if warmup_steps <= 0 or changed_at is None:
        return 1.0
    return min(max(step - changed_at + 1, 0) / warmup_steps, 1.0)


def warmup_pairs(stages: Sequence[Stage], enable_looping_at: float, default: int) -> list[tuple[int, bool]]:
    """Every (seq_len, looped) pair a run can meet, in order of first use: a stage covering progress
    ``(previous until, until]`` runs unlooped when some of that range lies below ``enable_looping_at`` and looped
    when some lies at or above it (recurrence never runs when ``enable_looping_at >= 1``). Without stages:
    ``default``, unlooped and looped (what the warm-up always built)."""
    if not stages:
        return [(default, False), (default, True)]
    pairs: list[tuple[int, bool]] = []
    start = 0.0
    for stage in stages:
        unlooped, looped = start < enable_looping_at, enable_looping_at < 1.0 and enable_looping_at <= stage.until
        modes = [False] * unlooped + [True] * looped
        pairs += [(stage.seq_len, mode) for mode in modes if (stage.seq_len, mode) not in pairs]
        start = stage.until
    return pairs
