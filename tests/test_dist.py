"""pgolf.dist: host batches reach the GPU through pinned memory; a process group waits as the params say."""

import importlib
import sys
from datetime import timedelta

import numpy as np
import pytest
import torch
import yaml

from pgolf import dist
from pgolf.config import read_params
from pgolf.dist import to_device
from tests.helpers.common import ROOT

pytestmark = pytest.mark.usefixtures("one_thread", "fresh_dynamo")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned copies need CUDA")
def test_host_batches_reach_the_gpu_through_pinned_memory():
    batch = np.arange(12, dtype=np.int64).reshape(3, 4)
    got = to_device(batch, torch.device("cuda"))
    assert got.is_cuda and torch.equal(got.cpu(), torch.from_numpy(batch))


def test_a_process_group_waits_as_long_as_the_params_say(monkeypatch):
    """init_process_group gets train.dist_timeout_seconds (torch's NCCL default, 600 s, is within reach of one
    rank's compile warm-up); none given, torch's default."""
    seen = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda backend, **kw: seen.append(kw["timeout"]))
    dist.init(1800.0)
    dist.init()
    assert seen == [timedelta(seconds=1800), None]


class _Launched(Exception):
    pass


@pytest.mark.parametrize("stage", ["train", "evaluate"])
def test_the_launched_stages_take_the_timeout_from_params(stage, monkeypatch, tmp_path):
    params = read_params(ROOT / "params.yaml")
    params["train"]["dist_timeout_seconds"] = 77.0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    module = importlib.import_module(f"stages.{stage}")
    seen = []

    def init(timeout_seconds=None):
        seen.append(timeout_seconds)
        raise _Launched

    monkeypatch.setattr(dist, "init", init)
    if stage == "train":  # what comes before the launch: the model's vocabulary, the shards' recorded check
        monkeypatch.setattr(module, "resolve_model", lambda params, tokenizer: None)
        monkeypatch.setattr(module.shards, "read_manifest", lambda directory: {})
        monkeypatch.setattr(module, "recorded_check", lambda *a, **k: {})
    monkeypatch.setattr(sys, "argv", [f"stages/{stage}.py", "--params", str(tmp_path / "params.yaml")])
    with pytest.raises(_Launched):
        module.main()
    assert seen == [77.0]
