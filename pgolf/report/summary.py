"""The run at a glance: the score ladder on one document set, the bytes, and the measured compliance.

Built from the metrics the stages wrote (nothing is recomputed or declared here) into ``metrics/summary.json`` (every
figure), ``metrics/headline.json`` (the pipeline's only DVC metrics file, :func:`headline`: what ``dvc metrics show``
and ``dvc exp show`` print) and ``metrics/ladder.csv`` (one row per rung: the ``dvc plots`` bar view):

* **ladder**: ``prequant_raw`` and ``prequant_<weights>`` (export), ``dequantized`` (quantize), ``model_bin``
  (evaluate's plain score of the decoded ``model.bin``), then each evaluation mode. Every rung comes from the one
  scorer (:mod:`pgolf.score.scorer`) on the same documents: the stage fails, naming the file, when two metrics
  files name different document sets. ``model_bin_equals_dequantized`` says whether the decoded rung equals the
  dequantized one to the last bit (it must: same weights, same scorer, same documents; a multi-rank evaluation
  sums in another order and may differ in the last digits).
* **compliance**, each figure measured by the stage that ran it:
  ``train``: training seconds (the loop's wall clock) + Hessian-collection seconds (the record's 600 s include the
  Hessians) against the training budget; ``eval``: per mode, the evaluation clock two ways, each labelled:
  ``practice`` (scoring with its TTT updates, what the challenge's records time: decompression and the compile
  warm-up outside) and ``strict`` (decompression + warm-up + scoring, everything), against the evaluation budget,
  with the mode's audit standing (compliant / unaudited / violated); ``artifact``: the counted bytes against the
  limit; ``data``: the training and calibration documents checked against the validation documents' hashes.
* **the verdict** ``compliant``: the artifact fits, the data check passed and the reported mode's audits ran and
  passed; and, only on the hardware the budgets are defined on (``compliance.hardware``, e.g. 8xH100, compared
  with what ``train`` measured), training + Hessians and the reported mode's ``practice`` clock are within their
  budgets. Elsewhere (a CPU, one GPU) the clocks are shown as informative (``timing_applies: false``): a 2-core
  CPU's minutes say nothing about 8xH100 seconds.
* **device time** (``device_time``), from each stage's run card (:mod:`pgolf.runcard`): per stage its wall
  seconds times the devices it computed on (a torchrun job's world size; 1 for a single process, the CPU counted
  as one device), their total and device-hours, and, when ``compliance.device_hour_price`` is above 0, the cost at
  that price per device-hour. The stages counted are those with metrics (train to size; the data stages are shared
  by every experiment and DVC restores them); a metrics file written without a run card leaves its stage and the
  total ``null``.
"""

from __future__ import annotations

from pathlib import Path

from pgolf.config import NonNegative, Positive, Section
from pgolf.errors import PgolfError
from pgolf.eval.reported import reported_mode
from pgolf.files import read_json


class ComplianceConfig(Section):
    """params.yaml ``compliance``: the challenge's budgets, for the hardware they are defined on."""

    hardware: str  # the hardware the budgets hold for (the challenge: 8xH100)
    train_budget_seconds: Positive  # training + Hessian collection (the challenge: 600)
    eval_budget_seconds: Positive  # decompress + warm-up + scoring + TTT (the challenge: 600)
    device_hour_price: NonNegative  # the price of one device-hour, for the run's cost (0: no cost shown)


STAGE_METRICS = {"train": "train.json", "export": "export.json", "calibrate": "calibrate.json",
                 "quantize": "quantize.json", "compress": "compress.json", "evaluate": "eval.json",
                 "size": "size.json"}  # fmt: skip
"""The stages whose run cards the device time adds up, and their metrics files, in pipeline order."""


def _same_documents(sets: dict[str, dict]) -> dict:
    """The one document set every metrics file names; an error naming the first file that differs."""
    (first, reference), *others = sets.items()
    for name, docs in others:
        if docs != reference:
            raise PgolfError(
                f"{name} scored another document set than {first} ({docs} vs {reference}): the ladder would not "
                "compare rung by rung; re-run the stages after changing the `score` section (`dvc repro`)"
            )
    return reference


def ladder(export: dict, quantize: dict, evaluate: dict) -> dict[str, float]:
    """val_bpb per rung, in order."""
    rungs = {"prequant_raw": export.get("prequant_raw", export.get(f"prequant_{export['weights']}"))["val_bpb"]}
    rungs[f"prequant_{export['weights']}"] = export[f"prequant_{export['weights']}"]["val_bpb"]
    rungs["dequantized"] = quantize["dequantized"]["val_bpb"]
    modes = evaluate["modes"]
    rungs["model_bin"] = modes["plain"]["val_bpb"]
    rungs.update({name: m["val_bpb"] for name, m in modes.items() if name != "plain"})
    return rungs


def on_budget_hardware(measured: str, budget: str) -> bool:
    """Whether the hardware a run measured (``8x NVIDIA H100 80GB HBM3``, ``1x cpu``) is the one the budgets hold
    for (``8xH100``): the same device count and the budget's device name within the measured one."""
    count, _, name = budget.partition("x")
    got, _, device = measured.partition("x")
    return count.strip() == got.strip() and bool(name.strip()) and name.strip().lower() in device.lower()


def eval_clock(seconds: dict, budget: float) -> dict:
    """A mode's evaluation clock, both ways: ``practice`` (scoring with TTT) and ``strict`` (everything)."""
    practice = float(seconds["scoring"])
    strict = float(seconds["decompress"]) + float(seconds["warmup"]) + practice
    return {"decompress_seconds": seconds["decompress"], "warmup_seconds": seconds["warmup"],
            "scoring_seconds": seconds["scoring"], "practice_seconds": round(practice, 3),
            "strict_seconds": round(strict, 3), "budget_seconds": budget, "within": practice <= budget,
            "within_strict": strict <= budget}  # fmt: skip


def compliance(cfg: ComplianceConfig, train: dict, calibrate: dict, size: dict, evaluate: dict) -> dict:
    """The measured checks and the verdict (see the module docstring)."""
    train_s, calib_s = float(train["train_seconds"]), float(calibrate["seconds"])
    total = train_s + calib_s
    budget = cfg.train_budget_seconds
    applies = on_budget_hardware(train["hardware"], cfg.hardware)
    out = {"timing_applies": applies,
           "train": {"hardware": train["hardware"], "budget_hardware": cfg.hardware, "train_seconds": train_s,
                     "calibrate_seconds": calib_s, "total_seconds": round(total, 3), "budget_seconds": budget,
                     "within": total <= budget}}  # fmt: skip
    out["eval"] = {name: {**eval_clock(m["seconds"], cfg.eval_budget_seconds), "audit": m["compliance"]}
                   for name, m in evaluate["modes"].items()}  # fmt: skip
    out["artifact"] = {"bytes": size["total_bytes"], "limit": size["limit_bytes"],
                       "within": size["total_bytes"] <= size["limit_bytes"]}  # fmt: skip
    checks = {"train": train["provenance"], "calibrate": calibrate["provenance"]}
    out["data"] = {"val_documents": train["provenance"]["val_documents"],
                   **{f"{k}_documents": v["train_documents"] for k, v in checks.items()},
                   "overlap": sum(v["overlap"] for v in checks.values()),
                   "passed": all(v["passed"] for v in checks.values()),
                   "fingerprint": train.get("data_fingerprint")}  # fmt: skip
    reported = reported_mode(list(out["eval"]))
    out["reported_mode"] = reported
    clocks = out["train"]["within"] and out["eval"][reported]["within"]
    out["compliant"] = bool(out["artifact"]["within"] and out["data"]["passed"]
                            and out["eval"][reported]["audit"] == "compliant" and (clocks or not applies))  # fmt: skip
    return out


def stage_device_time(card: dict | None) -> dict | None:
    """One stage's device time from its run card: its device, how many, wall seconds and their product."""
    if card is None:
        return None
    hw, wall = card["hardware"], float(card["wall_seconds"])
    return {"device": hw["device"], "devices": hw["devices"], "wall_seconds": wall,
            "device_seconds": round(wall * hw["devices"], 3)}  # fmt: skip


def device_time(cards: dict[str, dict | None], price: float) -> dict:
    """Device-seconds per stage and in total (None unless every stage has its run card), device-hours, and the cost
    at ``price`` per device-hour when ``price`` is above 0."""
    stages = {name: stage_device_time(card) for name, card in cards.items()}
    known = [s["device_seconds"] for s in stages.values() if s is not None]
    total = round(sum(known), 3) if len(known) == len(stages) else None
    out = {"stages": stages, "device_seconds": total, "device_hours": None if total is None else round(total / 3600, 4)}
    if price > 0:
        out["device_hour_price"] = price
        out["cost"] = None if total is None else round(total / 3600 * price, 4)
    return out


LADDER_COLUMNS = ["rung", "val_bpb"]


def ladder_rows(summary: dict) -> list[dict]:
    """metrics/ladder.csv's rows: one per rung, in ladder order (the ``score_ladder`` plot)."""
    return [{"rung": name, "val_bpb": bpb} for name, bpb in summary["ladder"].items()]


def build(cfg: ComplianceConfig, metrics: Path) -> dict:
    """metrics/summary.json's content from the stages' metrics files in ``metrics``."""
    loaded = {stage: read_json(metrics / file, stage) for stage, file in STAGE_METRICS.items()}
    train, export, calibrate, quantize = loaded["train"], loaded["export"], loaded["calibrate"], loaded["quantize"]
    evaluate, size = loaded["evaluate"], loaded["size"]
    docs = _same_documents({"metrics/train.json": train["final_val_documents"],
                            "metrics/export.json": export["documents"],
                            "metrics/quantize.json": quantize["documents"],
                            "metrics/eval.json": evaluate["documents"]})  # fmt: skip
    rungs = ladder(export, quantize, evaluate)
    return {
        "documents": docs,
        "ladder": rungs,
        "model_bin_equals_dequantized": rungs["model_bin"] == rungs["dequantized"],
        "train_val_equals_prequant_raw": train["final_val"]["val_bpb"] == rungs["prequant_raw"],
        "bytes": {"model": size["model_bytes"], "code": size["code_bytes"], "total": size["total_bytes"],
                  "limit": size["limit_bytes"], "fits": size["fits"]},
        "compliance": compliance(cfg, train, calibrate, size, evaluate),
        "device_time": device_time({name: loaded[name].get("run") for name in STAGE_METRICS}, cfg.device_hour_price),
    }  # fmt: skip


def headline(summary: dict) -> dict:
    """The few figures ``dvc metrics show`` and ``dvc exp show`` carry (about 18 columns): the document set, the
    ladder, whether the decoded rung is the dequantized one, the bytes, the compliance verdict with the two
    clocks, and the device-hours (with the cost when priced); the full detail stays in metrics/summary.json."""
    c, d = summary["compliance"], summary["device_time"]
    run = {"device_hours": d["device_hours"], **({"cost": d["cost"]} if "cost" in d else {})}
    reported = c["eval"][c["reported_mode"]]
    return {"documents": {"count": summary["documents"]["count"], "sha256": summary["documents"]["sha256"][:16]},
            "ladder": summary["ladder"], "model_bin_equals_dequantized": summary["model_bin_equals_dequantized"],
            "bytes": {"total": summary["bytes"]["total"], "fits": summary["bytes"]["fits"]},
            "compliance": {"compliant": c["compliant"], "timing_applies": c["timing_applies"],
                           "train_seconds": c["train"]["total_seconds"], "eval_seconds": reported["practice_seconds"],
                           "eval_strict_seconds": reported["strict_seconds"], "audit": reported["audit"]},
            "device_time": run}  # fmt: skip
