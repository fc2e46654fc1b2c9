"""The training loop of the train stage: wall-clock budget, schedule, recurrence switch, averaging, logging,
resume from a checkpoint (:mod:`pgolf.train.checkpoint`) and NaN abort. The stage writes what it leaves.

Time: the training clock is the wall time of the whole loop after the compile warm-up (steps, averaging, logging,
the loader, everything), as the record's, less the pauses for validation and checkpoint writes; it survives a
resume. ``progress`` = training seconds / (``max_wallclock_seconds`` - ``calibration_reserve_seconds``): the
reserve is the Hessian collection's share of the challenge's 600 s, so training + Hessians fits by construction.
The step that crosses the budget is the last one. The same progress picks the step's attention segment cap when
``train.seq_schedule`` is set (:mod:`pgolf.train.seq_schedule`).

One host synchronization per step: the step leaves its loss on the device (:func:`pgolf.train.step.train_step`),
and the loop gathers the clock, the non-finite-loss flag, a compile failure and the time since the last
checkpoint into one small vector, all-reduced (max) across ranks and read once (:func:`agree`): every rank takes
the same decisions (stop, abort, checkpoint) from the same numbers, and the loss is read from that same vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from tqdm import tqdm

from pgolf import compiler as tc
from pgolf import dist
from pgolf.compiler import CompileLimitHit
from pgolf.model.attention import set_max_seqlen
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.optim.averaging import EMA, TightSWA
from pgolf.optim.schedule import looping_active, lr_multiplier, momentum_at, progress
from pgolf.score.scorer import Ladder
from pgolf.train.config import TrainConfig
from pgolf.train.loader import PackingLoader, Prefetcher
from pgolf.train.seq_schedule import active_seq_len, rewarm_factor, warmup_pairs
from pgolf.train.step import (
    Optimizers,
    StepOutcome,
    TrainingAborted,
    TrainingDiverged,
    apply_dtype_policy,
    build_optimizers,
    compile_warmup,
    train_step,
)

if TYPE_CHECKING:
    from pgolf.train.qat import FakeQuant


@dataclass
class Progress:
    step: int = 0
    train_seconds: float = 0.0
    tokens: int = 0
    looping_from_step: int | None = None
    last_loss: float = float("nan")
    seq_len: int | None = None
    """The segment cap of the latest step (None before the first)."""
    seq_len_changed_at: int | None = None
    """The step of the latest segment-cap change, where the LR re-warm-up restarts (None: no change yet)."""


@dataclass
class Run:
    """Everything the loop mutates, built once by :func:`setup`."""

    model: GPT
    opts: Optimizers
    loader: Prefetcher
    averager: EMA | TightSWA
    cfg: TrainConfig
    info: dist.DistInfo
    grad_accum: int
    fingerprint: str
    forward: Callable[..., torch.Tensor]
    """The model, or its torch.compile'd version on CUDA (:mod:`pgolf.compiler`)."""
    state: Progress = field(default_factory=Progress)
    qat: FakeQuant | None = None
    """Late QAT's shared fake quantizer (installed before compiling), when train.qat.enabled."""
    graphs_at_warmup: int = 0
    """Graphs torch.compile built in this process's warm-up (0 when not compiling)."""
    graphs_in_training: int = 0
    """Graphs built after the warm-up: recompilations that cost training time (0 expected)."""

    @property
    def compiling(self) -> bool:
        return isinstance(self.forward, tc.CompiledModel)


def fingerprint(model_cfg: ModelConfig, cfg: TrainConfig, data_manifest: dict, world_size: int) -> str:
    """What a resumable checkpoint must match: configs, data and world size (the launcher is irrelevant)."""
    train = cfg.model_dump(exclude={"launcher", "checkpoint_seconds", "log_every"})
    payload = json.dumps([model_cfg.model_dump(), train, data_manifest, world_size], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def setup(model_cfg: ModelConfig, cfg: TrainConfig, shard_dir: Path, data_manifest: dict, info: dist.DistInfo) -> Run:
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = GPT(model_cfg).to(info.device)
    apply_dtype_policy(model, cfg.dtype_policy)
    compiling = tc.enabled(cfg.compile, info.device)
    opts = build_optimizers(model, cfg, compile_backend=tc.BACKEND if compiling else None)
    loader = Prefetcher(PackingLoader(shard_dir, tokens_per_rank=cfg.micro_batch_tokens, seq_len=cfg.seq_len,
                                      rank=info.rank, world_size=info.world_size, bos_id=model_cfg.bos_id,
                                      vocab_size=model_cfg.vocab_size), info.device)  # fmt: skip
    if cfg.averaging.kind == "ema":
        averager: EMA | TightSWA = EMA(model, cfg.averaging.ema_decay)
    else:
        averager = TightSWA(model, cfg.averaging.swa_every, cfg.averaging.swa_start_below_lr)
    qat = None
    if cfg.qat.enabled:  # imported only then (the submission program carries QAT only then)
        from pgolf.train.qat import install_fake_quant

        qat = install_fake_quant(model, cfg.qat.bits)
    num_seq_lens = len({stage.seq_len for stage in cfg.seq_schedule} | {cfg.seq_len})
    forward = tc.compile_model(model, cfg.seq_len, num_seq_lens=num_seq_lens) if compiling else model
    return Run(model, opts, loader, averager, cfg, info, cfg.grad_accum(info.world_size),
               fingerprint(model_cfg, cfg, data_manifest, info.world_size), forward, qat=qat)  # fmt: skip


def _set_seq_len(run: Run, seq_len: int) -> None:
    """Cut the loader's segments at ``seq_len`` and, when compiling, make it the attention's static bound."""
    run.loader.set_seq_len(seq_len)
    if run.compiling:
        set_max_seqlen(run.model, seq_len)


def _step(run: Run, looped: bool) -> StepOutcome:
    return train_step(run.forward, run.model, run.opts, run.loader, grad_accum=run.grad_accum, looped=looped,
                      clip=run.cfg.grad_clip_norm, clip_scope=run.cfg.grad_clip_scope,
                      device=run.info.device)  # fmt: skip


class Clock:
    """The training clock: wall seconds since :meth:`start` plus those before a resume, less the :meth:`paused`
    stretches (validation, checkpoint writes); and when the last checkpoint (into ``resume_dir``) was written."""

    def __init__(self, resume_dir: Path) -> None:
        self.resume_dir = resume_dir
        self.offset, self.origin, self.since_save = 0.0, time.perf_counter(), time.perf_counter()

    def start(self, before: float) -> None:
        self.offset, self.origin = before, time.perf_counter()
        self.since_save = self.origin

    def seconds(self) -> float:
        return self.offset + time.perf_counter() - self.origin

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.origin += time.perf_counter() - start


@dataclass(frozen=True)
class Signals:
    """What every rank agrees on after a step: the training seconds, whether some rank's loss is not finite or
    met the recompile limit, the seconds since the last checkpoint (each the max over ranks), and this rank's
    summed loss."""

    seconds: float
    diverged: bool
    compile_failed: bool
    since_save: float
    loss_sum: float


def agree(clock: Clock, outcome: StepOutcome, device: torch.device) -> Signals:
    """The step's one host synchronization: a 5-value vector on the device (filled without host copies), its
    first four all-reduced with max, read once."""
    v = torch.empty(5, dtype=torch.float64, device=device)
    v[0].fill_(clock.seconds())
    v[1].copy_((~torch.isfinite(outcome.loss_sum)).to(torch.float64))
    v[2].fill_(float(outcome.failure is not None))
    v[3].fill_(time.perf_counter() - clock.since_save)
    v[4].copy_(outcome.loss_sum)
    dist.all_reduce_max(v[:4])
    seconds, diverged, failed, since_save, loss_sum = v.tolist()
    return Signals(seconds, diverged > 0, failed > 0, since_save, loss_sum)


def warmup(run: Run) -> float:
    """The thrown-away compile warm-up; returns its seconds. The loader restarts afterwards.

    When compiling: forward/backward of one real row with every cu_seqlens bucket for every (segment cap,
    schedule) pair the run can meet (no step; both schedules of ``train.seq_len`` without a seq_schedule), then
    ``warmup_steps`` full steps unlooped and looped at the first cap; weights and optimizer state are restored."""
    if run.cfg.warmup_steps <= 0 and not run.compiling:
        return 0.0
    start, graphs, cfg = time.perf_counter(), tc.graphs_compiled(), run.cfg
    loader_state = run.loader.state_dict()
    if run.compiling:
        batch = run.loader.next_batch().to(run.info.device)
        pairs = warmup_pairs(cfg.seq_schedule, cfg.enable_looping_at, cfg.seq_len)
        for seq_len in dict.fromkeys(n for n, _ in pairs):
            _set_seq_len(run, seq_len)
            tc.bucket_warmup(run.forward, run.model, batch.inputs, batch.targets, seq_len=seq_len,
                             autocast=lambda: dist.autocast(run.info.device),
                             schedules=tuple(looped for n, looped in pairs if n == seq_len))  # fmt: skip
    _set_seq_len(run, active_seq_len(cfg.seq_schedule, 0.0, cfg.seq_len))

    def steps(looped: bool) -> None:
        for _ in range(run.cfg.warmup_steps):
            _step(run, looped)

    compile_warmup(steps, run.model, run.opts)
    run.loader.load_state_dict(loader_state)
    run.graphs_at_warmup = tc.graphs_compiled() - graphs
    if run.compiling:
        dist.print0(f"train: compile warm-up built {run.graphs_at_warmup} graphs "
                    f"({time.perf_counter() - start:.1f} s, not counted in the budget)")  # fmt: skip
    return time.perf_counter() - start


def _check_recompiles(run: Run, graphs_before: int) -> None:
    """Report graphs built during training: each one stalled a step on compilation."""
    built = tc.graphs_compiled() - graphs_before
    if built > run.graphs_in_training:
        dist.print0(f"train: WARNING torch.compile built {built - run.graphs_in_training} new graph(s) at "
                    f"step {run.state.step} (a cu_seqlens bucket, seq_len or schedule not warmed up)")  # fmt: skip
        run.graphs_in_training = built


class Logger:
    """dvclive metrics (rank 0; ``dvcyaml=False`` so dvc.yaml is never rewritten) and a progress bar."""

    def __init__(self, live_dir: Path, resumed: bool, enabled: bool, total: int) -> None:
        self.enabled, self.live_dir = enabled, live_dir
        self.live = None
        if enabled:
            try:
                from dvclive import Live
            except ImportError:  # a box with the training packages only (the GPU check): train, without curves
                dist.print0(f"train: WARNING dvclive is not installed, so no curves go to {live_dir} "
                            "(pip install dvclive, or pgolf[pipeline])")  # fmt: skip
            else:
                self.live = Live(str(live_dir), resume=resumed, dvcyaml=False, save_dvc_exp=False)
        self.bar = tqdm(total=total, unit="%", desc="train", disable=not enabled, mininterval=1)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if self.live is not None:
            self.live.step = step
            for name, value in metrics.items():
                self.live.log_metric(name, value)
            self.live.sync()

    def progress(self, frac: float, loss: float) -> None:
        self.bar.update(max(0, min(self.bar.total, int(frac * self.bar.total)) - self.bar.n))
        self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)

    def close(self) -> None:
        self.bar.close()
        if self.live is not None:
            self.live.end()


def validate(run: Run, ladder: Ladder, looped: bool) -> dict:
    """The ladder's score (val_bpb, val_loss, tokens, bytes) of the live weights under the attention bound
    ``train.seq_len`` whatever the stage; the model is left as it was. The last one is export's ``prequant_raw``."""
    stage = run.loader.seq_len
    _set_seq_len(run, run.cfg.seq_len)
    try:
        return ladder.rung(run.model, looped, name="val")
    finally:
        _set_seq_len(run, stage)


def _seq_stage(run: Run, frac: float) -> float:
    """Select this step's segment cap (a line when it changes) and return the LR re-warm-up factor."""
    s, cfg = run.state, run.cfg
    seq_len = active_seq_len(cfg.seq_schedule, frac, cfg.seq_len)
    if s.seq_len is not None and seq_len != s.seq_len:
        s.seq_len_changed_at = s.step
        dist.print0(f"train: seq_len {s.seq_len} -> {seq_len} at step {s.step} (progress {frac:.3f})")
    elif s.seq_len is None and cfg.seq_schedule:
        dist.print0(f"train: seq_len {seq_len} from step {s.step} (progress {frac:.3f})")
    s.seq_len = seq_len
    if run.loader.seq_len != seq_len:
        _set_seq_len(run, seq_len)
    return rewarm_factor(s.step, s.seq_len_changed_at, cfg.seq_warmup_steps)


def _one_step(run: Run, logger: Logger, val: Ladder | None, clock: Clock) -> bool:
    """Run one optimizer step unless the budget is spent; return whether training goes on."""
    s, cfg, device = run.state, run.cfg, run.info.device
    # 1. where we are: progress from the clock every rank agreed on after the last step
    frac = progress(s.train_seconds, s.step, cfg.train_budget_seconds, cfg.iterations)
    if s.step >= cfg.iterations or frac >= 1.0:
        return False
    # 2. the schedule at this progress: LR, segment cap, recurrence, late QAT, Muon momentum
    lr_mul = lr_multiplier(frac, cfg.warmdown_frac, cfg.min_lr)
    step_lr = lr_mul * _seq_stage(run, frac)  # the optimizers' multiplier; QAT and SWA triggers read lr_mul
    looped = looping_active(frac, cfg.enable_looping_at) or s.looping_from_step is not None
    if looped and s.looping_from_step is None:
        s.looping_from_step = s.step
        dist.print0(f"train: depth recurrence on at step {s.step} (progress {frac:.3f})")
    if run.qat is not None and lr_mul < cfg.qat.start_below_lr and not run.qat.active:
        run.qat.switch_on()
        dist.print0(f"train: late QAT (int{cfg.qat.bits} STE) on at step {s.step} (lr multiplier {lr_mul:.3f})")
    run.opts.set_schedule(step_lr, momentum_at(s.step, cfg.muon.momentum_warmup_start, cfg.muon.momentum,
                                              cfg.muon.momentum_warmup_steps))  # fmt: skip
    # 3. the step and the weight average, launched without waiting for the device
    outcome = _step(run, looped)
    run.averager.after_step(run.model, s.step, lr_mul)
    # 4. the one host synchronization: every rank reads the same clock and flags
    sig = agree(clock, outcome, device)
    loss = sig.loss_sum / run.grad_accum
    if sig.compile_failed:
        raise outcome.failure or CompileLimitHit("another rank hit the torch.compile recompile limit (see its error)")
    if sig.diverged:
        raise TrainingDiverged(f"train: loss is {loss} at step {s.step}; lower train.muon.lr / train.adam.*_lr or "
                               "check the data (weights were not written)")  # fmt: skip
    s.step, s.train_seconds, s.tokens, s.last_loss = s.step + 1, sig.seconds, s.tokens + cfg.global_batch_tokens, loss
    # 5. logging, validation (off the clock) and checkpoints (off the clock, when every rank says it is time)
    if s.step <= 5 or s.step % cfg.log_every == 0:
        rate = s.tokens / max(s.train_seconds, 1e-9)
        qat_on = run.qat is not None and run.qat.active
        metrics = {"train/loss": loss, "train/lr_mul": step_lr, "train/tokens_per_s": rate,
                   "train/looped": float(looped), "train/qat": float(qat_on)}  # fmt: skip
        if cfg.seq_schedule:
            metrics["train/seq_len"] = float(s.seq_len)
        logger.log(s.step, metrics)
    if val is not None:
        _validate_if_due(run, logger, val, looped, clock)
    logger.progress(frac, loss)
    if cfg.checkpoint_seconds and sig.since_save >= cfg.checkpoint_seconds:
        with clock.paused():
            from pgolf.train.checkpoint import save_checkpoint  # only with train.checkpoint_seconds

            save_checkpoint(run, clock.resume_dir, logger.live_dir)
        clock.since_save = time.perf_counter()
    return True


def _validate_if_due(run: Run, logger: Logger, val: Ladder, looped: bool, clock: Clock) -> None:
    """Score the live weights (off the clock) every ``val_every`` steps and at ``abort_above.step``, where a score
    above the threshold stops training (every rank reads the same all-reduced score)."""
    step, cfg, abort = run.state.step, run.cfg, run.cfg.abort_above
    if not (cfg.val_every and step % cfg.val_every == 0 or step == abort.step):
        return
    with clock.paused():
        bpb = _log_val(run, logger, val, looped)["val_bpb"]
    if step == abort.step and bpb > abort.val_bpb:
        raise TrainingAborted(f"train: val_bpb {bpb:.4f} at step {step} is above train.abort_above.val_bpb "
                              f"({abort.val_bpb}); stopped early, no weights written")  # fmt: skip


def _log_val(run: Run, logger: Logger, val: Ladder, looped: bool) -> dict:
    score = validate(run, val, looped)
    logger.log(run.state.step, {"val/loss": score["val_loss"], "val/bpb": score["val_bpb"]})
    return score


def train(run: Run, *, val: Ladder | None, resume_dir: Path, live_dir: Path) -> dict:
    """Warm up, resume if possible, train until the budget is spent; returns the summary for meta.json."""
    warm_seconds = warmup(run)
    resumed = False
    if run.cfg.checkpoint_seconds:  # no checkpoint is ever written without it
        from pgolf.train.checkpoint import try_resume

        resumed = try_resume(run, resume_dir, live_dir)
    logger = Logger(live_dir, resumed, run.info.is_main, total=100)
    graphs, clock = tc.graphs_compiled(), Clock(resume_dir)
    clock.start(run.state.train_seconds)
    try:
        while _one_step(run, logger, val, clock):
            if run.compiling:
                _check_recompiles(run, graphs)
        final = None
        if val is not None:  # the last point of the curve: the raw weights training ends with
            looped = run.state.looping_from_step is not None
            logged = run.cfg.val_every and run.state.step % run.cfg.val_every == 0
            final = validate(run, val, looped) if logged else _log_val(run, logger, val, looped)
    finally:
        logger.close()
    s = run.state
    return {"steps": s.step, "tokens": s.tokens, "train_seconds": round(s.train_seconds, 3),
            "warmup_seconds": round(warm_seconds, 3), "looping_from_step": s.looping_from_step,
            "final_train_loss": s.last_loss, "resumed": resumed, "world_size": run.info.world_size,
            "grad_accum": run.grad_accum, "averaging": run.cfg.averaging.kind, "compiled": run.compiling,
            "graphs_at_warmup": run.graphs_at_warmup, "graphs_in_training": run.graphs_in_training,
            **tc.graph_report(run.forward), "final_val": final}  # fmt: skip
