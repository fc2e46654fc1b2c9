"""Training: a tiny run end to end, exact resume after a kill, the warm-up changes nothing, NaN aborts,
torchrun with 2 gloo ranks equals 1 rank with gradient accumulation, and the export stage."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import build_tokenizer, data_cfg, model_cfg, tokenize, tokenizer_cfg

from pgolf import tensorio
from pgolf.config import parse_section, read_params
from pgolf.model.config import ModelParams
from pgolf.score.scorer import ScoreConfig
from pgolf.train import loop
from pgolf.train.config import TrainConfig
from pgolf.train.export import ExportConfig
from stages.export import Paths as ExportPaths
from stages.export import export
from stages.train import Paths as TrainPaths
from stages.train import resolve_model, train

pytest.importorskip("dvclive")  # the train stage's metrics

ROOT = Path(__file__).resolve().parents[1]


SCORE = ScoreConfig(docs=6, seq_len=64, batch_windows=4)  # training validation and export score these documents


def train_cfg(**overrides) -> TrainConfig:
    raw = read_params(ROOT / "params.yaml")["train"]
    raw.update(max_wallclock_seconds=0, iterations=8, global_batch_tokens=512, micro_batch_tokens=256, seq_len=64,
               warmup_steps=0, log_every=2, val_every=4, checkpoint_seconds=0)  # fmt: skip
    raw["muon"] = {**raw["muon"], "momentum_warmup_steps": 4}
    raw.update(overrides)
    return parse_section(raw, "train", TrainConfig)


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus):
    root = tmp_path_factory.mktemp("train_data")
    build_tokenizer(tokenizer_cfg(vocab_size=512), root / "tok", corpus, 2)
    tokenize(corpus, root / "tok", data_cfg(shard_tokens=50_000), root / "shards")
    return root


def paths(data, out: Path) -> TrainPaths:
    return TrainPaths(shards=data / "shards", tokenizer=data / "tok", out=out / "train", resume=out / "resume",
                      live=out / "live", metrics=out / "train.json")  # fmt: skip


def tiny_model() -> ModelParams:
    """The toy architecture as params (the train stage resolves vocab and BOS from the tokenizer)."""
    return ModelParams.model_validate(model_cfg().model_dump(exclude={"vocab_size", "bos_id"}))


def _weights(directory: Path, name: str = "raw") -> dict:
    return tensorio.load_tensors(directory / f"{name}.safetensors")[0]


def test_tiny_run_writes_weights_meta_and_curves(data, tmp_path):
    summary = train(tiny_model(), train_cfg(), SCORE, paths(data, tmp_path))
    out = tmp_path / "train"
    meta = json.loads((out / "meta.json").read_text())
    assert summary["steps"] == meta["steps"] == 8 and meta["tokens"] == 8 * 512
    assert meta["model_config"]["vocab_size"] == 512 and meta["averaging"] == "ema"
    assert meta["looping_from_step"] == 3  # enable_looping_at 0.35 of 8 steps
    raw, ema = _weights(out), _weights(out, "ema")
    assert raw.keys() == ema.keys() and not torch.equal(raw["tok_emb.weight"], ema["tok_emb.weight"])
    assert meta["final_train_loss"] < 6.2  # ln 512 = 6.24 at init
    live = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert "train" in live and "val" in live
    assert not (tmp_path / "resume").exists()


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
    assert summary["final_train_loss"] == pytest.approx(eager["final_train_loss"], rel=1e-4)


def _curve_steps(path: Path) -> list[int]:
    return [int(line.split("\t")[0]) for line in path.read_text().splitlines()[1:]]


def run_killed_at(step: int, cfg: TrainConfig, data, out: Path, monkeypatch) -> None:
    """A training run into ``out`` that dies (KeyboardInterrupt) when it reaches ``step``."""
    original = loop._step

    def dies(run, looped):
        if run.state.step == step:
            raise KeyboardInterrupt("killed")
        return original(run, looped)

    monkeypatch.setattr(loop, "_step", dies)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(), cfg, SCORE, paths(data, out))
    monkeypatch.setattr(loop, "_step", original)


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
        a, b = _weights(tmp_path / "straight" / "train", name), _weights(tmp_path / "killed" / "train", name)
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_warmup_steps_change_nothing(data, tmp_path):
    train(tiny_model(), train_cfg(iterations=3), SCORE, paths(data, tmp_path / "cold"))
    train(tiny_model(), train_cfg(iterations=3, warmup_steps=2), SCORE, paths(data, tmp_path / "warm"))
    a, b = _weights(tmp_path / "cold" / "train"), _weights(tmp_path / "warm" / "train")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_aborts_naming_the_step(data, tmp_path, monkeypatch):
    original = loop._step
    monkeypatch.setattr(
        loop, "_step", lambda run, looped: float("nan") if run.state.step == 2 else original(run, looped)
    )
    with pytest.raises(Exception, match="loss is nan at step 2"):
        train(tiny_model(), train_cfg(), SCORE, paths(data, tmp_path))
    assert not (tmp_path / "train").exists()


def test_divergence_reaches_the_user_as_one_line(capsys):
    from pgolf.cli import run
    from pgolf.errors import PgolfError
    from pgolf.train.step import TrainingDiverged

    message = "train: loss is nan at step 2; lower train.muon.lr / train.adam.*_lr or check the data"

    def main() -> None:
        raise TrainingDiverged(message)

    assert issubclass(TrainingDiverged, PgolfError)
    with pytest.raises(SystemExit) as stop:
        run(main)
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]


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


def test_torchrun_two_ranks_equal_one_rank_with_accumulation(data, tmp_path):
    """With the averaged gradient clipped (global scope); the record's local clipping clips each rank's half of the
    batch, which one process with accumulation cannot reproduce (tests/test_gpu_paths.py checks both scopes)."""
    params = _stage_params(tmp_path, grad_clip_scope="global")
    _run_stage([sys.executable], params, data, tmp_path / "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    _run_stage(torchrun, params, data, tmp_path / "two")
    one, two = (
        json.loads((tmp_path / "one/train/meta.json").read_text()),
        json.loads((tmp_path / "two/train/meta.json").read_text()),
    )
    assert (one["grad_accum"], one["world_size"]) == (2, 1) and (two["grad_accum"], two["world_size"]) == (1, 2)
    a, b = _weights(tmp_path / "one" / "train"), _weights(tmp_path / "two" / "train")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def _export_paths(data: Path, run: Path, out: Path) -> ExportPaths:
    return ExportPaths(train=run / "train", shards=data / "shards", tokenizer=data / "tok", out=out,
                       metrics=out / "export.json")  # fmt: skip


def test_export_scores_raw_and_ema_on_the_training_validation_documents_and_casts(data, tmp_path):
    summary = train(tiny_model(), train_cfg(), SCORE, paths(data, tmp_path))
    raw = read_params(ROOT / "params.yaml")["export"]
    cfg = parse_section({**raw, "embedding_dtype": "bfloat16"}, "export", ExportConfig)
    metrics = export(cfg, SCORE, _export_paths(data, tmp_path, tmp_path / "export"))
    assert metrics["byte_count"] == "sidecar" and metrics["looped"] is True
    for key in ("prequant_ema", "prequant_raw", "unigram_baseline"):
        assert 0 < metrics[key]["val_bpb"] < 20 and metrics[key]["tokens"] == metrics["prequant_ema"]["tokens"]
    # one scorer, one document set: training's last validation point is the raw rung, to the last bit
    assert summary["final_val_documents"] == metrics["documents"] and metrics["documents"]["count"] == 6
    keys = ("val_bpb", "val_loss", "tokens", "bytes")
    assert [summary["final_val"][k] for k in keys] == [metrics["prequant_raw"][k] for k in keys]
    assert metrics["prequant_raw"]["tokens"] == metrics["documents"]["targets"]
    tensors, meta = tensorio.load_tensors(tmp_path / "export" / "model.safetensors")
    assert tensors["tok_emb.weight"].dtype == torch.bfloat16 and meta["weights"] == "ema"
    with pytest.raises(Exception, match="export.weights=swa but training kept ema"):
        export(parse_section({**raw, "weights": "swa"}, "export", ExportConfig), SCORE,
               _export_paths(data, tmp_path, tmp_path / "x"))  # fmt: skip


def test_unigram_baseline_is_add_one_counts(tmp_path):
    from pgolf.data import shards
    from pgolf.score.unigram import unigram_log_probs

    shards.write_shard(tmp_path / "train_000000.bin", [1, 2, 2, 3])
    shards.write_shard(tmp_path / "train_000001.bin", [1, 2])
    logp = unigram_log_probs(tmp_path, vocab_size=5)
    expected = torch.tensor([1, 3, 4, 2, 1], dtype=torch.float64) / 11
    torch.testing.assert_close(logp.exp(), expected)
    capped = unigram_log_probs(tmp_path, vocab_size=5, max_tokens=4)  # the first 4 tokens only
    torch.testing.assert_close(capped.exp(), torch.tensor([1, 2, 3, 2, 1], dtype=torch.float64) / 9)
    shards.write_shard(tmp_path / "train_000002.bin", [7])  # an id beyond the vocabulary: named, not dropped
    with pytest.raises(shards.ShardError, match=r"train_000002.bin: token id 7 is out of range for vocab_size 5"):
        unigram_log_probs(tmp_path, vocab_size=5)


def test_gptq_beats_rtn_on_the_layers_of_a_trained_model(data, tmp_path):
    """Train the toy model briefly, calibrate on its training shards, then compare H-weighted errors."""
    from pgolf.model.config import ModelConfig
    from pgolf.model.gpt import GPT
    from pgolf.quant.hessian import CalibrateConfig, calibration_windows, collect_hessians
    from pgolf.quant.policy import QuantizeConfig, decide
    from pgolf.quant.quantize import quantize_state

    train(tiny_model(), train_cfg(iterations=20, val_every=0), SCORE, paths(data, tmp_path))
    state, meta = tensorio.load_tensors(tmp_path / "train" / "ema.safetensors")
    model = GPT(ModelConfig.model_validate(json.loads((tmp_path / "train" / "meta.json").read_text())["model_config"]))
    model.load_state_dict(state)
    calib = parse_section({"batches": 4, "batch_tokens": 512, "seq_len": 64, "seed": 0, "doc_isolated": True},
                          "calibrate", CalibrateConfig)  # fmt: skip
    hessians, _ = collect_hessians(model, calibration_windows(data / "shards", calib, 0, 1), looped=True,
                                   doc_isolated=True)  # fmt: skip
    from pgolf.quant import gptq

    base = read_params(ROOT / "params.yaml")["quantize"]
    cfg = parse_section({**base, "lqer": {**base["lqer"], "enabled": False}}, "quantize", QuantizeConfig)
    _, rows, _ = quantize_state(model.state_dict(), hessians, decide(model, cfg), cfg)
    ours = {r["name"]: r["h_error"] for r in rows}
    rtn = {}  # round-to-nearest under the same SDClip scales
    for name, d in decide(model, cfg).items():
        if d.spec is not None:
            w = model.state_dict()[name].float()
            scale = gptq.sdclip_scales(w, d.spec.clip_sigmas, d.spec.bits)
            w_hat = gptq.rtn_quantize(w, scale, d.spec.bits).float() * scale.float()[:, None]
            rtn[name] = gptq.hessian_error(w - w_hat, hessians[name])
    assert sum(ours.values()) < 0.8 * sum(rtn.values())
    assert sum(ours[n] < rtn[n] for n in ours) >= 0.9 * len(ours)
