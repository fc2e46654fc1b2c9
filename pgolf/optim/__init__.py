"""Optimizers, schedules and weight averaging: Muon, the LR/momentum/recurrence schedule, EMA and Tight SWA."""
