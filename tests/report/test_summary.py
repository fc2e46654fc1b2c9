"""pgolf.report.summary: a failed or skipped check is not compliant, a rung on other documents stops the
summary naming the file, a model.bin rung off the dequantized one is flagged."""

from __future__ import annotations

import pytest

from pgolf.errors import PgolfError
from pgolf.report.summary import build
from tests.helpers.report import COMPLIANCE, DOCS, eval_mode, summary_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "change",
    [
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, "unaudited")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, "violated")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, total=601.0)}}},
        {"train": {"train_seconds": 596.0}},  # + 5 s of Hessians: over the 600 s
        {"size": {"total_bytes": 16_000_001}},
    ],
    ids=["unaudited", "violated", "slow-eval", "slow-train", "too-big"],
)
def test_a_failed_or_skipped_check_is_not_compliant(tmp_path, change):
    assert build(COMPLIANCE, summary_metrics(tmp_path, **change))["compliance"]["compliant"] is False


def test_a_rung_on_other_documents_stops_the_summary_naming_the_file(tmp_path):
    other = {**DOCS, "sha256": "cd" * 32}
    with pytest.raises(PgolfError, match=r"metrics/quantize.json scored another document set"):
        build(COMPLIANCE, summary_metrics(tmp_path, quantize={"documents": other}))
    (tmp_path / "eval.json").unlink()
    with pytest.raises(PgolfError, match=r"eval.json: not found; run `dvc repro evaluate`"):
        build(COMPLIANCE, tmp_path)


def test_a_model_bin_rung_off_the_dequantized_one_is_flagged(tmp_path):
    modes = {"plain": eval_mode(1.8500001), "lora_ttt": eval_mode(1.8)}
    summary = build(COMPLIANCE, summary_metrics(tmp_path, eval={"documents": DOCS, "modes": modes}))
    assert summary["model_bin_equals_dequantized"] is False
