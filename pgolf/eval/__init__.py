"""The evaluation modes beyond the plain score (sliding window, phased LoRA TTT, chunk SGD TTT, multi-phase TTT),
their registry and the ``eval`` section (:mod:`pgolf.eval.modes`), the n-gram tilt, and the audits that decide a
mode's compliance. Every mode scores through :mod:`pgolf.score`."""
