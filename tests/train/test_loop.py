"""pgolf.train.loop: the compiled warm-up covers every (seq_len, schedule) pair a progressive run meets and the
attention bound follows the stage; the logger without dvclive."""

import json
from types import SimpleNamespace

import torch

from pgolf import compiler as tc
from pgolf import dist
from pgolf.model.attention import DocAttention
from pgolf.train import loop
from stages.train import resolve_model
from tests.helpers.common import needs
from tests.helpers.config import model_cfg, train_cfg
from tests.helpers.train import seq_run_cfg, tiny_model


def _bounds(model) -> set:
    """The static attention bounds (max_seqlen) of the model's layers."""
    return {v.max_seqlen for m in model.modules() for v in vars(m).values() if isinstance(v, DocAttention)}


@needs("dvclive")  # its former file imported test_train.py, which skipped without dvclive
def test_compiled_warmup_covers_every_stage_pair_and_the_bound_follows_the_stage(data, monkeypatch):
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
    cfg = seq_run_cfg(seq_schedule=stages, warmup_steps=0, enable_looping_at=0.35)
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


def test_training_logs_without_dvclive(monkeypatch, tmp_path, capsys):
    """A box with the training packages only: the logger warns once and training goes on without curves."""
    import sys

    from pgolf.train.loop import Logger

    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive now raises ImportError
    logger = Logger(tmp_path / "live", resumed=False, enabled=True, total=100)
    logger.log(1, {"train/loss": 1.0})
    logger.progress(0.5, 1.0)
    logger.close()
    assert "dvclive is not installed" in capsys.readouterr().out and not (tmp_path / "live").exists()


# ---------------------------------------------------------------------------------- one host sync per step

HOST_SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def _sync_worker(rank: int, port: int, shard_dir: str, out: str) -> None:
    """Train 8 steps on 2 gloo ranks, counting every tensor-to-host read made by the training loop's own code
    (pgolf.train, pgolf.dist, pgolf.optim); the CPU attention backend's length read is the model's, not counted."""
    import os
    import sys
    from pathlib import Path

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    info = dist.init()
    counts: dict[str, int] = {}
    for name in HOST_SYNCS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith(("pgolf.train", "pgolf.dist", "pgolf.optim")):
                counts[f"{caller}.{__name}"] = counts.get(f"{caller}.{__name}", 0) + 1
            return __original(self, *args, **kwargs)

        setattr(torch.Tensor, name, counted)
    cfg = train_cfg(iterations=8, val_every=0, checkpoint_seconds=0, log_every=1000)
    model = model_cfg()
    run = loop.setup(model, cfg, Path(shard_dir), {"sha256": {}}, info)
    summary = loop.train(run, val=None, resume_dir=Path(out) / f"resume{rank}", live_dir=Path(out) / f"live{rank}")
    (Path(out) / f"syncs{rank}.json").write_text(json.dumps({"steps": summary["steps"], "counts": counts}))
    dist.shutdown()


def test_a_training_step_waits_for_the_device_once_on_two_ranks(tmp_path):
    """The loss, the NaN flag, the compile-failure flag, the clock and the checkpoint timer travel in one
    all-reduced vector read once per step (the record: one read per step); before, 4.08 reads per step."""
    import socket

    import numpy as np
    import torch.multiprocessing as mp

    from pgolf.data import shards

    rng = np.random.default_rng(0)
    tokens = rng.integers(2, 64, 50_000).astype(np.uint16)
    tokens[rng.choice(tokens.size, 200, replace=False)] = 1
    tokens[0] = 1
    (tmp_path / "shards").mkdir()
    shards.write_shard(tmp_path / "shards" / "train_000000.bin", tokens)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_sync_worker, args=(port, str(tmp_path / "shards"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        result = json.loads((tmp_path / f"syncs{rank}.json").read_text())
        assert result["steps"] == 8
        assert sum(result["counts"].values()) == result["steps"], result["counts"]
