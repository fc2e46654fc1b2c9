"""The summary stage: the ladder in order and the measured checks, written as the headline metrics."""

from __future__ import annotations

import json

import pytest

from pgolf.report.summary import build
from stages.summary import Paths, summarize
from tests.helpers.report import COMPLIANCE, summary_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


def _flat(tree):
    for value in tree.values():
        yield from _flat(value) if isinstance(value, dict) else [value]


def test_summary_reads_the_ladder_in_order_and_the_measured_checks(tmp_path):
    paths = Paths(metrics_dir=summary_metrics(tmp_path), out=tmp_path / "summary.json", ladder=tmp_path / "ladder.csv",
                  headline=tmp_path / "headline.json")  # fmt: skip
    summary = summarize(COMPLIANCE, paths)
    assert summary == build(COMPLIANCE, tmp_path)
    assert summary["ladder"] == {"prequant_raw": 1.9, "prequant_ema": 1.8, "dequantized": 1.85, "model_bin": 1.85,
                                 "sliding": 1.84, "lora_ttt": 1.80}  # fmt: skip
    assert summary["model_bin_equals_dequantized"] and summary["train_val_equals_prequant_raw"]
    c = summary["compliance"]
    assert c["train"]["total_seconds"] == 105.0 and c["train"]["within"] and c["reported_mode"] == "lora_ttt"
    lora = c["eval"]["lora_ttt"]
    assert (lora["practice_seconds"], lora["strict_seconds"]) == (7.0, 10.0)
    assert c["artifact"]["within"] and c["data"]["passed"]
    assert c["compliant"] is True
    assert (tmp_path / "ladder.csv").read_text().splitlines()[:2] == ["rung,val_bpb", "prequant_raw,1.9"]
    head = json.loads((tmp_path / "headline.json").read_text())
    assert head["ladder"] == summary["ladder"] and head["compliance"] == {
        "compliant": True,
        "timing_applies": True,
        "train_seconds": 105.0,
        "eval_seconds": 7.0,
        "eval_strict_seconds": 10.0,
        "audit": "compliant",
    }
    columns = sum(1 for _ in _flat(head))
    assert columns <= 20, columns  # what `dvc metrics show` prints: at most 30 columns with the revision
