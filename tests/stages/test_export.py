"""The export stage: raw and EMA scored on the training validation documents, the embedding cast, a missing
average refused."""

from pathlib import Path

import pytest
import torch

from pgolf import tensorio
from pgolf.config import parse_section, read_params
from pgolf.train.export import ExportConfig
from stages.export import Paths as ExportPaths
from stages.export import export
from stages.train import train
from tests.helpers.common import ROOT
from tests.helpers.config import train_cfg
from tests.helpers.train import SCORE, paths, tiny_model

pytest.importorskip("dvclive")  # the train stage's metrics (the guard of its former file, tests/test_train.py)


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
    # the run card (pgolf.runcard) is in both stages' metrics, in no artifact: the same seed gives the same bytes
    assert summary["run"]["hardware"]["devices"] == metrics["run"]["hardware"]["devices"] == 1
    assert "run" not in meta and "run" not in tensorio.load_tensors(tmp_path / "train" / "raw.safetensors")[1]
    with pytest.raises(Exception, match="export.weights=swa but training kept ema"):
        export(parse_section({**raw, "weights": "swa"}, "export", ExportConfig), SCORE,
               _export_paths(data, tmp_path, tmp_path / "x"))  # fmt: skip
