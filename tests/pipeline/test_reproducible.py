"""The embedded default trains to a step count, so the same seed gives the same model.bin bytes on every run:
train -> export -> calibrate -> quantize -> compress twice, as DVC runs the stages, cut small; the outputs of train
and calibrate carry no timings, so they are byte-identical too."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from tests.helpers.common import ROOT

pytest.importorskip("dvclive")  # the train stage's curves


def _params(tmp_path: Path, tokenizer: Path) -> Path:
    """params.yaml as shipped, its training and scoring scopes cut to seconds (still step-bound)."""
    params = read_params(ROOT / "params.yaml")
    assert params["train"]["max_wallclock_seconds"] == 0, "the embedded default must train to a step count"
    meta = yaml.safe_load((tokenizer / "meta.json").read_text())
    params["tokenizer"]["vocab_size"] = meta["vocab_size"]
    params["train"].update(iterations=3, val_every=0, checkpoint_seconds=0, warmup_steps=0)
    params["score"].update(docs=4, seq_len=128)
    params["calibrate"].update(batches=2, batch_tokens=1024, seq_len=128)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _model_bin(run: Path, params: Path, tokenizer: Path, shards: Path) -> str:
    a = {name: run / name for name in ("train", "export", "calibrate", "quant", "submission")}
    steps = [
        ["stages.train", "--shards", shards, "--tokenizer", tokenizer, "--out", a["train"], "--resume", run / "resume",
         "--live", run / "live", "--metrics", run / "train.json"],
        ["stages.export", "--train", a["train"], "--shards", shards, "--tokenizer", tokenizer, "--out", a["export"],
         "--metrics", run / "export.json"],
        ["stages.calibrate", "--export", a["export"], "--shards", shards, "--out", a["calibrate"], "--metrics",
         run / "calibrate.json"],
        ["stages.quantize", "--export", a["export"], "--calibrate", a["calibrate"], "--shards", shards, "--tokenizer",
         tokenizer, "--out", a["quant"], "--metrics", run / "quantize.json", "--tensors", run / "tensors.csv"],
        ["stages.compress", "--quant", a["quant"], "--out", a["submission"], "--metrics", run / "compress.json"],
    ]  # fmt: skip
    for module, *args in steps:
        cmd = [sys.executable, "-m", module, "--params", params, *map(str, args)]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, f"{module}: {result.stderr[-3000:]}"
    files = [*sorted(a["train"].iterdir()), a["calibrate"] / "hessians.safetensors", a["submission"] / "model.bin"]
    return {str(f.relative_to(run)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.slow
@pytest.mark.parametrize("built", [False], indirect=True, ids=["plain"])
def test_two_runs_of_the_default_give_the_same_bytes(built, tmp_path):
    """model.bin, and the train and calibrate outputs it comes from (no timings inside them), so that a second
    machine's `dvc repro` finds every stage after train unchanged."""
    docs, tokenizer, shards = built
    params = _params(tmp_path, tokenizer)
    first = _model_bin(tmp_path / "one", params, tokenizer, shards)
    second = _model_bin(tmp_path / "two", params, tokenizer, shards)
    assert first == second and len(first) == 5  # raw, ema, meta.json, hessians, model.bin
