"""Progressive training context (train.seq_schedule, train.seq_warmup_steps): the stage at a progress, the LR
re-warm-up, the compile warm-up pairs, the config checks, the loader under a changing cap, and short real runs
whose cap changes mid-run (curves, resume across the change, the off case)."""

import contextlib
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_train import SCORE, _weights, data, paths, run_killed_at, tiny_model, train_cfg  # noqa: F401 (data: a fixture)

from pgolf import compiler as tc
from pgolf import dist, tensorio
from pgolf.config import ConfigError
from pgolf.data import shards
from pgolf.model.attention import DocAttention
from pgolf.optim.schedule import lr_multiplier
from pgolf.train import loop
from pgolf.train.config import SeqStage
from pgolf.train.loader import PackingLoader
from pgolf.train.seq_schedule import active_seq_len, rewarm_factor, warmup_pairs
from stages.train import resolve_model, train

FRONTIER = [SeqStage(seq_len=1024, until=0.1), SeqStage(seq_len=2048, until=0.7), SeqStage(seq_len=3072, until=1.0)]


@pytest.mark.parametrize(
    ("frac", "seq_len"),
    [(0.0, 1024), (0.05, 1024), (0.1, 1024), (0.1000001, 2048), (0.5, 2048), (0.7, 2048), (0.7000001, 3072),
     (0.999, 3072), (1.0, 3072)],
)  # fmt: skip
def test_stage_is_the_first_whose_until_is_not_passed(frac, seq_len):
    assert active_seq_len(FRONTIER, frac, default=7) == seq_len


def test_no_stages_is_the_default_length():
    assert active_seq_len([], 0.0, default=512) == active_seq_len([], 0.99, default=512) == 512


def test_rewarm_ramp_values():
    assert [rewarm_factor(step, 100, 32) for step in (100, 101, 115, 130, 131, 500)] == [
        1 / 32, 2 / 32, 16 / 32, 31 / 32, 1.0, 1.0]  # fmt: skip
    assert rewarm_factor(100, None, 32) == 1.0  # no change yet
    assert rewarm_factor(100, 100, 0) == rewarm_factor(100, 100, -1) == 1.0  # off


def test_warmup_pairs_cover_what_each_stage_meets():
    # 1024 runs below 0.35 only, 2048 spans it, 3072 lies above it
    assert warmup_pairs(FRONTIER, 0.35, 3072) == [(1024, False), (2048, False), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 0.1, 3072) == [(1024, False), (1024, True), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 0.0, 3072) == [(1024, True), (2048, True), (3072, True)]
    assert warmup_pairs(FRONTIER, 1.0, 3072) == [(1024, False), (2048, False), (3072, False)]
    assert warmup_pairs([], 1.0, 512) == [(512, False), (512, True)]  # what the warm-up always built


@pytest.mark.parametrize(
    ("schedule", "seq_len", "message"),
    [
        ([(64, 0.5), (32, 0.5), (16, 1.0)], 64, r"train.seq_schedule\[\*\].until must be strictly increasing"),
        ([(64, 0.0), (32, 1.0)], 64, r"until must be strictly increasing in \(0, 1\]"),
        ([(32, 0.5), (64, 0.9)], 64, r"train.seq_schedule\[-1\].until must be 1.0"),
        ([(32, 0.5), (64, 1.5)], 64, r"strictly increasing in \(0, 1\]"),
        ([(32, 0.5), (48, 1.0)], 64, r"train.seq_len \(64\) must equal the largest train.seq_schedule\[\*\].seq_len"),
        ([(0, 0.5), (64, 1.0)], 64, r"train.seq_schedule\[\*\].seq_len must be positive"),
    ],
)
def test_bad_schedules_are_config_errors_naming_the_key(schedule, seq_len, message):
    stages = [{"seq_len": n, "until": u} for n, u in schedule]
    with pytest.raises(ConfigError, match=message):
        train_cfg(seq_len=seq_len, seq_schedule=stages)


def test_negative_rewarm_steps_is_a_config_error():
    with pytest.raises(ConfigError, match="train.seq_warmup_steps must be >= 0"):
        train_cfg(seq_warmup_steps=-1)


def test_loader_cap_changes_segments_not_tokens(tmp_path):
    values = 1000 + np.arange(400)
    values[[0, 150, 170]] = 1  # BOS: documents of 150, 20 and 230 tokens
    shards.write_shard(tmp_path / "train_000000.bin", values)
    ld = PackingLoader(tmp_path, tokens_per_rank=199, seq_len=64, rank=0, world_size=1, bos_id=1, vocab_size=2000)
    state = ld.state_dict()
    seen = {}
    for seq_len in (64, 16, 64):
        ld.load_state_dict(state)
        ld.set_seq_len(seq_len)
        batches = [ld.next_batch() for _ in range(2)]
        lengths = [np.diff(np.unique(b.cu_seqlens.numpy())) for b in batches]
        assert all(b.inputs.shape == (1, 199) for b in batches)
        assert max(x.max() for x in lengths) == seq_len  # documents longer than the cap are cut at it
        seen.setdefault(seq_len, []).append(([b.inputs for b in batches], sum(x.size for x in lengths)))
    (inputs64, segs64), (inputs16, segs16) = seen[64][0], seen[16][0]
    assert all(torch.equal(a, b) for a, b in zip(inputs64, inputs16, strict=True))  # same tokens per step
    assert segs16 > segs64  # ... in more, shorter segments
    assert seen[64][1][1] == segs64  # back to 64: the same segments as before
    with pytest.raises(ValueError, match="seq_len must be positive"):
        ld.set_seq_len(0)


# ------------------------------------------------------------------------------------------- real runs

STAGES = [{"seq_len": 32, "until": 0.25}, {"seq_len": 64, "until": 1.0}]  # 6 steps: 32 at steps 0-1, 64 after


def _cfg(**overrides):
    """6 steps of one 256-token micro-batch (frac = step / 6), each logged, no validation but the last."""
    return train_cfg(**{"iterations": 6, "global_batch_tokens": 256, "log_every": 1, "val_every": 0, **overrides})


def _spy_loader(monkeypatch) -> list[tuple[int, int]]:
    """Record (cap, longest segment) of every batch the loader serves."""
    served = []
    original = PackingLoader.next_batch

    def next_batch(self):
        batch = original(self)
        served.append((self.seq_len, int(np.diff(batch.cu_seqlens.numpy()).max())))
        return batch

    monkeypatch.setattr(PackingLoader, "next_batch", next_batch)
    return served


def _curve(out: Path, name: str) -> dict[int, float]:
    rows = (out / "live" / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines()[1:]
    return {int(row.split("\t")[0]): float(row.split("\t")[1]) for row in rows}


def test_schedule_changes_mid_run_and_a_resume_across_the_change_keeps_the_ramp(data, tmp_path, monkeypatch, capsys):  # noqa: F811
    cfg = _cfg(seq_schedule=STAGES, seq_warmup_steps=3, checkpoint_seconds=1e-9)  # a checkpoint after every step
    served = _spy_loader(monkeypatch)
    summary = train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "straight"))
    assert summary["steps"] == 6 and summary["tokens"] == 6 * 256  # tokens per step unchanged
    assert "train: seq_len 32 -> 64 at step 2 (progress 0.333)" in capsys.readouterr().out
    assert [cap for cap, _ in served] == [32, 32, 64, 64, 64, 64]
    assert all(longest <= cap for cap, longest in served) and max(x for _, x in served) > 32
    assert _curve(tmp_path / "straight", "seq_len") == {1: 32, 2: 32, 3: 64, 4: 64, 5: 64, 6: 64}  # after step - 1
    lr = _curve(tmp_path / "straight", "lr_mul")
    ramp = {2: 1 / 3, 3: 2 / 3}  # the change at step 2, 3 steps of re-warm-up
    for step in range(6):
        assert lr[step + 1] == pytest.approx(lr_multiplier(step / 6, cfg.warmdown_frac, cfg.min_lr) * ramp.get(step, 1))

    run_killed_at(3, cfg, data, tmp_path / "killed", monkeypatch)  # inside the ramp
    progress = tensorio.load_tensors(tmp_path / "killed" / "resume" / "state.safetensors")[1]["progress"]
    assert (progress["step"], progress["seq_len"], progress["seq_len_changed_at"]) == (3, 64, 2)
    summary = train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "killed"))
    assert summary["resumed"] and summary["steps"] == 6
    assert _curve(tmp_path / "killed", "lr_mul") == lr
    for name in ("raw", "ema"):
        a, b = _weights(tmp_path / "straight" / "train", name), _weights(tmp_path / "killed" / "train", name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_off_keeps_seq_len_and_the_plain_lr_and_logs_no_seq_len(data, tmp_path, monkeypatch, capsys):  # noqa: F811
    cfg = _cfg(iterations=4, seq_warmup_steps=2)  # a ramp length without a schedule does nothing
    served = _spy_loader(monkeypatch)
    train(tiny_model(), cfg, SCORE, paths(data, tmp_path))
    assert [cap for cap, _ in served] == [64] * 4 and "seq_len" not in capsys.readouterr().out
    lr = _curve(tmp_path, "lr_mul")
    assert lr == {step + 1: lr_multiplier(step / 4, cfg.warmdown_frac, cfg.min_lr) for step in range(4)}
    assert not (tmp_path / "live" / "plots" / "metrics" / "train" / "seq_len.tsv").exists()


def _bounds(model) -> set:
    """The static attention bounds (max_seqlen) of the model's layers."""
    return {v.max_seqlen for m in model.modules() for v in vars(m).values() if isinstance(v, DocAttention)}


def test_compiled_warmup_covers_every_stage_pair_and_the_bound_follows_the_stage(data, monkeypatch):  # noqa: F811
    """With compiling on, the warm-up builds each (seq_len, schedule) pair the run meets under that seq_len as the
    attention's static bound (on CUDA a distinct graph; CPU's sdpa_gather ignores the bound, so the compile itself is
    covered by test_train's compiled run), the recompile limit has room for all, and training and validation set the
    bound. Nothing here compiles: the bucket warm-up is recorded instead and there are no warm-up steps."""
    monkeypatch.setattr(tc, "enabled", lambda flag, device: flag)
    calls = []

    def bucket_warmup(forward, model, inputs, targets, *, seq_len, autocast, buckets=None, schedules=(False, True)):
        calls.append((seq_len, schedules, _bounds(model)))
        return 0

    monkeypatch.setattr(tc, "bucket_warmup", bucket_warmup)
    stages = [{"seq_len": 16, "until": 0.1}, {"seq_len": 32, "until": 0.7}, {"seq_len": 64, "until": 1.0}]
    cfg = _cfg(seq_schedule=stages, warmup_steps=0, enable_looping_at=0.35)
    manifest = json.loads((data / "shards" / "manifest.json").read_text())
    with torch._dynamo.config.patch(recompile_limit=8, accumulated_recompile_limit=8):  # (a monkeypatch deletes)
        run = loop.setup(resolve_model(tiny_model(), data / "tok"), cfg, data / "shards", manifest, dist.init())
        assert run.compiling and torch._dynamo.config.recompile_limit == 3 * 2 * (len(tc.BUCKET_LENGTHS) + 4)
    loop.warmup(run)
    assert calls == [(16, (False,), {16}), (32, (False, True), {32}), (64, (True,), {64})]
    assert run.loader.seq_len == 16 and _bounds(run.model) == {16}  # training starts in the first stage
    assert loop._seq_stage(run, 0.0) == 1.0 and _bounds(run.model) == {16}
    assert loop._seq_stage(run, 0.5) == 1.0  # no ramp: seq_warmup_steps 0
    assert run.loader.seq_len == 32 and _bounds(run.model) == {32} and run.state.seq_len_changed_at == 0
    ladder = SimpleNamespace(rung=lambda model, *args, **kwargs: _bounds(model))
    assert loop.validate(run, ladder, looped=False) == {64}  # validation runs under train.seq_len ...
    assert run.loader.seq_len == 32 and _bounds(run.model) == {32}  # ... and the stage's bound comes back


def test_bucket_warmup_runs_the_given_schedules_and_skips_buckets_a_cap_never_meets():
    """256 tokens cut every 2 give at least 129 boundaries: the 64 and 128 buckets never occur."""
    weight = torch.nn.Parameter(torch.ones(()))
    seen = []

    def forward(inputs, targets, *, cu_seqlens, looped):
        seen.append((cu_seqlens.numel(), looped))
        return weight * 1.0

    ids = torch.zeros(1, 256, dtype=torch.int64)
    tc.bucket_warmup(forward, torch.nn.ParameterList([weight]), ids, ids, seq_len=2, autocast=contextlib.nullcontext,
                     buckets=(64, 128, 192, 256), schedules=(True,))  # fmt: skip
    assert seen == [(192, True), (256, True)] and weight.grad is None
