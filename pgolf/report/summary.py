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
"""

from __future__ import annotations

from pathlib import Path

from pgolf.config import Positive, Section
from pgolf.errors import PgolfError
from pgolf.files import read_json

REPORTED_MODE = "lora_ttt"


class ComplianceConfig(Section):
    """params.yaml ``compliance``: the challenge's budgets, for the hardware they are defined on."""

    hardware: str  # the hardware the budgets hold for (the challenge: 8xH100)
    train_budget_seconds: Positive  # training + Hessian collection (the challenge: 600)
    eval_budget_seconds: Positive  # decompress + warm-up + scoring + TTT (the challenge: 600)


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
    reported = REPORTED_MODE if REPORTED_MODE in out["eval"] else list(out["eval"])[-1]
    out["reported_mode"] = reported
    clocks = out["train"]["within"] and out["eval"][reported]["within"]
    out["compliant"] = bool(out["artifact"]["within"] and out["data"]["passed"]
                            and out["eval"][reported]["audit"] == "compliant" and (clocks or not applies))  # fmt: skip
    return out


LADDER_COLUMNS = ["rung", "val_bpb"]


def ladder_rows(summary: dict) -> list[dict]:
    """metrics/ladder.csv's rows: one per rung, in ladder order (the ``score_ladder`` plot)."""
    return [{"rung": name, "val_bpb": bpb} for name, bpb in summary["ladder"].items()]


def build(cfg: ComplianceConfig, metrics: Path) -> dict:
    """metrics/summary.json's content from the stages' metrics files in ``metrics``."""
    export = read_json(metrics / "export.json", "export")
    quantize = read_json(metrics / "quantize.json", "quantize")
    evaluate = read_json(metrics / "eval.json", "evaluate")
    size = read_json(metrics / "size.json", "size")
    train = read_json(metrics / "train.json", "train")
    calibrate = read_json(metrics / "calibrate.json", "calibrate")
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
    }  # fmt: skip


def headline(summary: dict) -> dict:
    """The few figures ``dvc metrics show`` and ``dvc exp show`` carry (about 17 columns): the document set, the
    ladder, whether the decoded rung is the dequantized one, the bytes, and the compliance verdict with the two
    clocks; the full detail stays in metrics/summary.json."""
    c = summary["compliance"]
    reported = c["eval"][c["reported_mode"]]
    return {"documents": {"count": summary["documents"]["count"], "sha256": summary["documents"]["sha256"][:16]},
            "ladder": summary["ladder"], "model_bin_equals_dequantized": summary["model_bin_equals_dequantized"],
            "bytes": {"total": summary["bytes"]["total"], "fits": summary["bytes"]["fits"]},
            "compliance": {"compliant": c["compliant"], "timing_applies": c["timing_applies"],
                           "train_seconds": c["train"]["total_seconds"], "eval_seconds": reported["practice_seconds"],
                           "eval_strict_seconds": reported["strict_seconds"], "audit": reported["audit"]}}  # fmt: skip
