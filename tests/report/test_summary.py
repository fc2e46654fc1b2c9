"""pgolf.report.summary: a failed or skipped check is not compliant, a rung on other documents stops the
summary naming the file, a model.bin rung off the dequantized one is flagged."""

from __future__ import annotations

import pytest

from pgolf.errors import PgolfError
from pgolf.report.summary import build, headline, on_budget_hardware
from tests.helpers.report import COMPLIANCE, DOCS, eval_mode, summary_metrics

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize(
    "change",
    [
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, "unaudited")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, "violated")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, scoring=601.0)}}},
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


def _lora(**seconds) -> dict:
    return {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "lora_ttt": eval_mode(1.8, **seconds)}}


def test_the_verdict_times_scoring_with_ttt_and_reports_the_strict_clock_beside_it(tmp_path):
    """A record-like evaluation on 8xH100: 590 s of scoring with TTT (within 600) after 20 s of decompression and
    110 s of compile warm-up (the strict clock, 720 s, is not)."""
    summary = build(COMPLIANCE, summary_metrics(tmp_path, eval=_lora(scoring=590.0, decompress=20.0, warmup=110.0)))
    lora = summary["compliance"]["eval"]["lora_ttt"]
    assert (lora["practice_seconds"], lora["strict_seconds"]) == (590.0, 720.0)
    assert lora["within"] is True and lora["within_strict"] is False
    assert summary["compliance"]["timing_applies"] is True and summary["compliance"]["compliant"] is True
    top = headline(summary)["compliance"]
    assert (top["eval_seconds"], top["eval_strict_seconds"], top["timing_applies"]) == (590.0, 720.0, True)


@pytest.mark.parametrize("change", [{"eval": _lora(scoring=601.0)}, {"train": {"train_seconds": 596.0}}],
                         ids=["slow-eval", "slow-train"])  # fmt: skip
def test_clocks_off_the_budgets_hardware_are_informative(tmp_path, change):
    for name, update in change.items():
        change[name] = {**update, "hardware": "1x cpu"} if name == "train" else update
    change.setdefault("train", {"hardware": "1x cpu"})
    summary = build(COMPLIANCE, summary_metrics(tmp_path, **change))
    c = summary["compliance"]
    assert c["timing_applies"] is False and c["compliant"] is True
    assert not (c["train"]["within"] and c["eval"]["lora_ttt"]["within"])  # shown, measured, not judged


@pytest.mark.parametrize(
    ("measured", "budget", "same"),
    [("8x NVIDIA H100 80GB HBM3", "8xH100", True), ("8x NVIDIA H100 PCIe", "8xH100", True),
     ("1x NVIDIA H100 80GB HBM3", "8xH100", False), ("8x NVIDIA H200", "8xH100", False), ("1x cpu", "8xH100", False),
     ("2x cpu", "2xcpu", True)],
)  # fmt: skip
def test_budget_hardware_is_the_device_count_and_name(measured, budget, same):
    assert on_budget_hardware(measured, budget) is same


def test_the_data_fingerprint_reaches_the_compliance_section(tmp_path):
    found = {"train_shards": 80, "train_tokens": 8_000_000_000, "val_tokens": 47_851_521, "val_targets": 47_851_520,
             "val_sha256": "ab" * 32}  # fmt: skip
    summary = build(COMPLIANCE, summary_metrics(tmp_path, train={"data_fingerprint": found}))
    assert summary["compliance"]["data"]["fingerprint"] == found


def _card(wall: float, devices: int = 1, device: str = "NVIDIA H100 80GB HBM3") -> dict:
    return {"run": {"hardware": {"device": device, "devices": devices, "cpus": 208}, "wall_seconds": wall}}


def _carded(tmp_path, **change):
    """Every stage's metrics with a run card: train on 8 devices for 900 s, the others on one, 100 s in all."""
    cards = {"train": _card(900.0, 8), "export": _card(30.0), "calibrate": _card(10.0), "quantize": _card(25.0),
             "compress": _card(20.0, device="cpu"), "eval": _card(14.5), "size": _card(0.5, device="cpu")}  # fmt: skip
    return summary_metrics(tmp_path, **{**cards, **change})


def test_device_time_is_each_stages_wall_seconds_times_its_devices_and_priced_only_when_asked(tmp_path):
    summary = build(COMPLIANCE, _carded(tmp_path))
    d = summary["device_time"]
    assert d["stages"]["train"] == {"device": "NVIDIA H100 80GB HBM3", "devices": 8, "wall_seconds": 900.0,
                                    "device_seconds": 7200.0}  # fmt: skip
    assert list(d["stages"]) == ["train", "export", "calibrate", "quantize", "compress", "evaluate", "size"]
    assert (d["device_seconds"], d["device_hours"]) == (7300.0, 2.0278) and "cost" not in d
    assert headline(summary)["device_time"] == {"device_hours": 2.0278}  # price 0: no cost column
    priced = build(COMPLIANCE.model_copy(update={"device_hour_price": 3.0}), tmp_path)["device_time"]
    assert (priced["device_hour_price"], priced["cost"]) == (3.0, 6.0833)
    assert headline({**summary, "device_time": priced})["device_time"] == {"device_hours": 2.0278, "cost": 6.0833}


def test_a_stage_without_its_run_card_leaves_the_total_unknown(tmp_path):
    priced = COMPLIANCE.model_copy(update={"device_hour_price": 3.0})
    summary = build(priced, _carded(tmp_path, quantize={"run": None}))
    d = summary["device_time"]
    assert d["stages"]["quantize"] is None and d["stages"]["train"]["device_seconds"] == 7200.0
    assert (d["device_seconds"], d["device_hours"], d["cost"]) == (None, None, None)
    assert headline(summary)["device_time"] == {"device_hours": None, "cost": None}
