"""The ``train`` section of params.yaml."""

from __future__ import annotations

from typing import Literal

from pgolf.config import ConfigError, Count, CountOrZero, Decay, Fraction, NonNegative, Positive, Section, Seed
from pgolf.optim.muon import MuonConfig
from pgolf.quant.bits import BitWidth


class AdamConfig(Section):
    """AdamW for the tied embedding and for the control tensors (scalars, gains, gates)."""

    embed_lr: NonNegative
    scalar_lr: NonNegative
    beta1: Decay
    beta2: Decay
    eps: Positive
    embed_wd: NonNegative
    scalar_wd: NonNegative


class AveragingConfig(Section):
    kind: Literal["ema", "swa"]
    """Averaged weights kept beside the raw ones: EMA (the record) or Tight SWA (#374)."""
    ema_decay: Decay
    swa_every: Count
    """swa: snapshot every this many steps ..."""
    swa_start_below_lr: Fraction
    """... once the LR multiplier has fallen below this."""


class QatConfig(Section):
    """Late STE fake quantization of the projection weights (#374: int6 once the LR multiplier is below 0.1)."""

    enabled: bool
    start_below_lr: Fraction
    """Switch on at the first step whose LR multiplier is below this (it stays on)."""
    bits: BitWidth
    """Grid: per-row s = max(rowmax/c, 1/c), integers in [-(c+1), c] with c = 2^(bits-1) - 1."""


class AbortAbove(Section):
    """Stop a clearly worse run early: at training step ``step`` the live weights are scored (the one scorer, the
    ``score`` section's documents) and training fails, writing no weights, when val_bpb is above ``val_bpb``; a
    sweep then wastes no more device time on a diverged or losing configuration. ``step`` 0: off."""

    step: CountOrZero
    val_bpb: NonNegative


class SeqStage(Section):
    """One stage of ``train.seq_schedule``: segments of at most ``seq_len`` tokens while progress <= ``until``."""

    seq_len: Count
    until: Fraction


class TrainConfig(Section):
    launcher: str
    """How DVC starts the stage: ``python`` or e.g. ``torchrun --standalone --nproc_per_node=8``."""
    seed: Seed
    max_wallclock_seconds: NonNegative
    """Training budget; progress = elapsed / budget drives the schedule (0 = step budget ``iterations``)."""
    calibration_reserve_seconds: NonNegative
    """Seconds of ``max_wallclock_seconds`` left to the Hessian collection (the calibrate stage), which the
    challenge counts in the same 600 s: training stops at max_wallclock_seconds - this, so that training +
    Hessians fits the budget by construction (the record: 0.5, too little for its ~8 s of Hessians; later records
    reserved 8-12 s)."""
    dist_timeout_seconds: Positive
    """How long a rank of a torchrun job waits in a collective for the others (``init_process_group``'s timeout;
    the train and evaluate stages) before the job fails: long enough for the slowest rank's compile warm-up
    (torch's default, 600 s for NCCL, is shorter than a record evaluation's warm-up can be)."""
    iterations: Count
    """Step cap (and the schedule's denominator when there is no wall-clock budget)."""
    global_batch_tokens: Count
    """Tokens per optimizer step over all ranks; gradient accumulation = global / (world * micro)."""
    micro_batch_tokens: Count
    """Tokens per rank per forward (one packed row)."""
    seq_len: Count
    """Longest attention segment: documents are cut into chunks of at most this many tokens. With a
    ``seq_schedule`` it must equal the largest stage ``seq_len`` (the bound validation runs under)."""
    seq_schedule: list[SeqStage]
    """Progressive context (#2014: 1024@0.1, 2048@0.7, 3072@1.0): each step cuts segments at the ``seq_len`` of
    the first stage whose ``until`` progress has not been passed; tokens per step do not change. ``[]``: always
    ``seq_len``. See :mod:`pgolf.train.seq_schedule`."""
    seq_warmup_steps: CountOrZero
    """After each change of the active seq_len the LR multiplier is scaled by (step - change + 1) / this, capped
    at 1 (#2014: 32; 0 = off). The QAT and SWA triggers read the multiplier before this ramp."""
    warmup_steps: CountOrZero
    """Compile/warm-up steps run unlooped and looped, then thrown away (weights and optimizer state restored)."""
    enable_looping_at: NonNegative
    """Progress at which depth recurrence switches on (>= 1: never)."""
    warmdown_frac: Fraction
    min_lr: Fraction
    """Floor of the LR multiplier during the linear warm-down."""
    grad_clip_norm: NonNegative
    """Clip of the gradient's global L2 norm over all parameters (0 = off)."""
    grad_clip_scope: Literal["local", "global"]
    """``local``: each rank clips its own accumulated gradient, then the ranks average (the record);
    ``global``: the rank-averaged gradient is clipped (what a DDP re-implementation does). Equal on one rank."""
    dtype_policy: Literal["fp32", "record"]
    """``fp32``: every parameter an fp32 master weight, so the residual stream stays fp32 under autocast;
    ``record``: the tied embedding is a bf16 parameter (bf16 AdamW moments and all-reduce), which makes the
    residual stream bf16, and every initial value is rounded through bf16 as the record's cast-and-restore does."""
    muon: MuonConfig
    adam: AdamConfig
    averaging: AveragingConfig
    qat: QatConfig
    log_every: Count
    val_every: CountOrZero
    """Steps between validation scores during training (0 = none but the last), on the ``score`` section's
    documents with the one scorer (:mod:`pgolf.score.scorer`)."""
    abort_above: AbortAbove
    checkpoint_seconds: NonNegative
    """Wall-clock seconds between resumable checkpoints (0 = none)."""
    compile: bool
    """torch.compile the model (one graph per cu_seqlens bucket, schedule and seq_schedule stage, built in the
    warm-up) and Muon's Newton–Schulz (CUDA only; ignored on CPU). See :mod:`pgolf.compiler`."""

    def model_post_init(self, _context: object) -> None:
        problems = []
        if self.max_wallclock_seconds > 0 and self.calibration_reserve_seconds >= self.max_wallclock_seconds:
            problems.append(f"train.calibration_reserve_seconds ({self.calibration_reserve_seconds}) must be less "
                            f"than train.max_wallclock_seconds ({self.max_wallclock_seconds})")  # fmt: skip
        if self.global_batch_tokens % self.micro_batch_tokens:
            problems.append(f"train.global_batch_tokens ({self.global_batch_tokens}) must be a multiple of "
                            f"train.micro_batch_tokens ({self.micro_batch_tokens})")  # fmt: skip
        if self.seq_schedule:
            problems += _schedule_problems(self.seq_schedule, self.seq_len)
        if problems:
            raise ConfigError("; ".join(problems))

    @property
    def train_budget_seconds(self) -> float:
        """The training wall clock's budget: max_wallclock_seconds less the calibration reserve (0: step-bound)."""
        if self.max_wallclock_seconds <= 0:
            return 0.0
        return self.max_wallclock_seconds - self.calibration_reserve_seconds

    def grad_accum(self, world_size: int) -> int:
        per_step = world_size * self.micro_batch_tokens
        if self.global_batch_tokens % per_step:
            raise ConfigError(
                f"train.global_batch_tokens={self.global_batch_tokens} is not a multiple of world_size "
                f"({world_size}) x train.micro_batch_tokens ({self.micro_batch_tokens})"
            )
        return self.global_batch_tokens // per_step


def _schedule_problems(stages: list[SeqStage], seq_len: int) -> list[str]:
    """What is wrong with a non-empty ``train.seq_schedule`` read against ``train.seq_len``."""
    problems = []
    untils = [stage.until for stage in stages]
    if any(not 0.0 < u <= 1.0 for u in untils) or any(b <= a for a, b in zip(untils, untils[1:], strict=False)):
        problems.append(f"train.seq_schedule[*].until must be strictly increasing in (0, 1] (got {untils})")
    if untils[-1] != 1.0:
        problems.append(f"train.seq_schedule[-1].until must be 1.0, so the schedule covers the run (got {untils[-1]})")
    lengths = [stage.seq_len for stage in stages]
    if max(lengths) != seq_len:
        problems.append(f"train.seq_len ({seq_len}) must equal the largest train.seq_schedule[*].seq_len "
                        f"({max(lengths)}): it is the cap every stage stays under")  # fmt: skip
    return problems
