"""Which evaluation mode's score a run reports: the one rule, shared by the summary, the records folder and the
submission program's log (a module of its own, so that the reports read it without importing torch)."""

from __future__ import annotations

REPORTED_MODE = "lora_ttt"


def reported_mode(names: list[str]) -> str:
    """The score a run reports among ``names`` (in ladder order): phased LoRA TTT when it ran (the record's), else
    the last."""
    return REPORTED_MODE if REPORTED_MODE in names else names[-1]
