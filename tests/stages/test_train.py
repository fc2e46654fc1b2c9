"""The train stage: a tiny run end to end, the compiled path, exact resume after a kill, the warm-up changes
nothing, NaN aborts, the model resolved against the tokenizer, torchrun with 2 gloo ranks equals 1 rank with
gradient accumulation, and a progressive context changing mid-run (curves, resume across the change, off)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pgolf import tensorio
from pgolf.config import read_params
from pgolf.optim.schedule import lr_multiplier
from pgolf.train import loop
from pgolf.train.loader import Prefetcher
from pgolf.train.step import StepOutcome, TrainingAborted
from stages.train import resolve_model, train
from tests.helpers.common import ROOT
from tests.helpers.config import train_cfg
from tests.helpers.train import SCORE, paths, run_killed_at, seq_run_cfg, tiny_model, weights

pytest.importorskip("dvclive")  # the train stage's metrics


def test_tiny_run_writes_weights_meta_and_curves(data, tmp_path):
    summary = train(tiny_model(), train_cfg(), SCORE, paths(data, tmp_path))
    out = tmp_path / "train"
    meta = json.loads((out / "meta.json").read_text())
    assert summary["steps"] == meta["steps"] == 8 and meta["tokens"] == 8 * 512
    assert meta["model_config"]["vocab_size"] == 512 and meta["averaging"] == "ema"
    assert meta["looping_from_step"] == 3  # enable_looping_at 0.35 of 8 steps
    raw, ema = weights(out), weights(out, "ema")
    assert raw.keys() == ema.keys() and not torch.equal(raw["tok_emb.weight"], ema["tok_emb.weight"])
    assert meta["final_train_loss"] < 6.2  # ln 512 = 6.24 at init
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert "train" in live and "val" in live
    assert not (tmp_path / "resume").exists()


def test_a_run_worse_than_abort_above_stops_at_its_step_and_writes_no_weights(data, tmp_path):
    """train.abort_above: scored at step 3 (no val_every step), a toy model's val_bpb is far above 1.0, so training
    stops there with one line naming the key and writes no weights; a threshold above the score lets it finish."""
    cfg = train_cfg(val_every=0, abort_above={"step": 3, "val_bpb": 1.0})
    with pytest.raises(TrainingAborted, match=r"val_bpb \d+\.\d+ at step 3 is above train.abort_above.val_bpb \(1.0\)"):
        train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "aborted"))
    assert not list((tmp_path / "aborted" / "train").glob("*.safetensors"))
    passed = train(tiny_model(), train_cfg(val_every=0, abort_above={"step": 3, "val_bpb": 100.0}), SCORE,
                   paths(data, tmp_path / "kept"))  # fmt: skip
    assert passed["steps"] == 8 and (tmp_path / "kept" / "train" / "raw.safetensors").is_file()


@pytest.mark.slow
def test_compiled_training_builds_every_graph_in_the_warmup(data, tmp_path, monkeypatch):
    """The compiled path on CPU (aot_eager): the warm-up builds the graphs of both schedules, the recurrence
    switch at step 3 and the rest of training build none, and the run follows the eager one."""
    from pgolf import compiler as tc

    eager = train(tiny_model(), train_cfg(warmup_steps=1, val_every=0), SCORE, paths(data, tmp_path / "eager"))
    monkeypatch.setattr(tc, "enabled", lambda flag, device: flag)
    monkeypatch.setattr(tc, "BACKEND", "aot_eager")
    monkeypatch.setattr(tc, "BUCKET_LENGTHS", (64,))  # these rows have fewer than 64 segments
    torch._dynamo.reset()
    try:
        cfg = train_cfg(warmup_steps=1, val_every=0)
        summary = train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "compiled"))
    finally:
        torch._dynamo.reset()
    assert summary["compiled"] and summary["looping_from_step"] == 3
    assert summary["graphs_at_warmup"] >= 2 and summary["graphs_in_training"] == 0
    assert summary["fullgraph"] is True and "graph_break" not in summary and eager["fullgraph"] is None
    assert summary["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-4)


def _curve_steps(path: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_weights_and_curves(data, tmp_path, monkeypatch):
    cfg = train_cfg(checkpoint_seconds=1e-9)  # a checkpoint after every step
    train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "straight"))
    run_killed_at(5, cfg, data, tmp_path / "killed", monkeypatch)
    shutil.rmtree(tmp_path / "killed" / "live")  # DVC deletes the stage's outputs before it re-runs it
    summary = train(tiny_model(), cfg, SCORE, paths(data, tmp_path / "killed"))
    assert summary["resumed"] and summary["steps"] == 8
    for curve in ("train/loss", "val/bpb"):  # the curves keep their pre-kill part, and end with a val point
        steps = [_curve_steps(tmp_path / run / "live" / "plots" / "metrics" / f"{curve}.tsv") for run in ("straight",
                 "killed")]  # fmt: skip
        assert steps[0] == steps[1] and steps[0][0] == (1 if curve == "train/loss" else 4), (curve, steps)
        assert steps[0][-1] == 8
    for name in ("raw", "ema"):
        a, b = weights(tmp_path / "straight" / "train", name), weights(tmp_path / "killed" / "train", name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_warmup_steps_change_nothing(data, tmp_path):
    train(tiny_model(), train_cfg(iterations=3), SCORE, paths(data, tmp_path / "cold"))
    train(tiny_model(), train_cfg(iterations=3, warmup_steps=2), SCORE, paths(data, tmp_path / "warm"))
    a, b = weights(tmp_path / "cold" / "train"), weights(tmp_path / "warm" / "train")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_aborts_naming_the_step(data, tmp_path, monkeypatch):
    original = loop._step

    def step(run, looped):
        outcome = original(run, looped)
        return StepOutcome(outcome.loss_sum * float("nan")) if run.state.step == 2 else outcome

    monkeypatch.setattr(loop, "_step", step)
    with pytest.raises(Exception, match="loss is nan at step 2"):
        train(tiny_model(), train_cfg(), SCORE, paths(data, tmp_path))
    assert not (tmp_path / "train").exists()


def test_model_is_resolved_against_the_tokenizer(data):

    cfg = resolve_model(tiny_model(), data / "tok")
    assert (cfg.vocab_size, cfg.bos_id) == (512, 1)


def _stage_params(tmp_path: Path, **train) -> Path:
    params = read_params(ROOT / "params.yaml")
    params["model"] = tiny_model().model_dump()
    params["train"] = train_cfg(iterations=4, val_every=0, warmup_steps=1, **train).model_dump()
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _run_stage(launcher: list[str], params: Path, data: Path, out: Path) -> None:
    args = ["--params", params, "--shards", data / "shards", "--tokenizer", data / "tok", "--out", out / "train",
            "--resume", out / "resume", "--live", out / "live", "--metrics", out / "train.json"]  # fmt: skip
    result = subprocess.run([*launcher, "-m", "stages.train", *map(str, args)], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_rank_with_accumulation(data, tmp_path):
    """With the averaged gradient clipped (global scope); the record's local clipping clips each rank's half of the
    batch, which one process with accumulation cannot reproduce (tests/train/test_step.py checks both scopes)."""
    params = _stage_params(tmp_path, grad_clip_scope="global")
    _run_stage([sys.executable], params, data, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run_stage(torchrun, params, data, tmp_path / "two")
    one, two = (
        json.loads((tmp_path / "one/train/meta.json").read_text()),
        json.loads((tmp_path / "two/train/meta.json").read_text()),
    )
    assert (one["grad_accum"], one["world_size"]) == (2, 1) and (two["grad_accum"], two["world_size"]) == (1, 2)
    a, b = weights(tmp_path / "one" / "train"), weights(tmp_path / "two" / "train")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


# ------------------------------------------------------------------------------------------- progressive context


STAGES = [{"seq_len": 32, "until": 0.25}, {"seq_len": 64, "until": 1.0}]  # 6 steps: 32 at steps 0-1, 64 after


def _spy_loader(monkeypatch) -> list[tuple[int, int]]:
    """Record (cap, longest segment) of every batch training takes (the prefetcher's hand-outs; it reads one batch
    ahead, and again after a change of seq_len)."""
    served = []
    original = Prefetcher.next_batch

    def next_batch(self):
        batch = original(self)
        served.append((self.seq_len, int(np.diff(batch.cu_seqlens.numpy()).max())))
        return batch

    monkeypatch.setattr(Prefetcher, "next_batch", next_batch)
    return served


def _curve(out: Path, name: str) -> dict[int, float]:
    rows = (out / "live" / "plots" / "metrics" / "train" / f"{name}.tsv").read_text().splitlines()[1:]
    return {int(row.split("\t")[0]): float(row.split("\t")[1]) for row in rows}


def test_schedule_changes_mid_run_and_a_resume_across_the_change_keeps_the_ramp(data, tmp_path, monkeypatch, capsys):
    cfg = seq_run_cfg(seq_schedule=STAGES, seq_warmup_steps=3, checkpoint_seconds=1e-9)  # a checkpoint after every step
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
        a, b = weights(tmp_path / "straight" / "train", name), weights(tmp_path / "killed" / "train", name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_off_keeps_seq_len_and_the_plain_lr_and_logs_no_seq_len(data, tmp_path, monkeypatch, capsys):
    cfg = seq_run_cfg(iterations=4, seq_warmup_steps=2)  # a ramp length without a schedule does nothing
    served = _spy_loader(monkeypatch)
    train(tiny_model(), cfg, SCORE, paths(data, tmp_path))
    assert [cap for cap, _ in served] == [64] * 4 and "seq_len" not in capsys.readouterr().out
    lr = _curve(tmp_path, "lr_mul")
    assert lr == {step + 1: lr_multiplier(step / 4, cfg.warmdown_frac, cfg.min_lr) for step in range(4)}
    assert not (tmp_path / "live" / "plots" / "metrics" / "train" / "seq_len.tsv").exists()
