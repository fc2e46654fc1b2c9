"""The report tests' material: scratch git + DVC repositories, the cells of an experiment table, and the metrics
files the summary stage reads."""

from __future__ import annotations

import functools
import json
import subprocess
import sys

import yaml

from pgolf.compress.bundle import program
from pgolf.config import read_params
from tests.helpers.common import ROOT
from tests.helpers.config import compliance_cfg


def git_dvc_repo(path):
    """``git init`` and ``dvc init`` in ``path``; returns a runner of commands there."""
    run = lambda *a: subprocess.run(a, cwd=path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    return run


def table_cells(text: str, labels: list[str]) -> dict[str, list[str]]:
    """Label -> cells of each table row (the tree prefix joined to its name)."""
    out = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in ("├─", "└─"):
            words = [f"{words[0]} {words[1]}", *words[2:]]
        if words and words[0] in labels:
            out[words[0]] = words[1:]
    return out


# --- the summary stage's inputs: each stage's metrics file of a run that passes every check ---

DOCS = {"count": 2, "targets": 100, "bytes": 300, "sha256": "ab" * 32}


def eval_mode(bpb, compliance="compliant", scoring=7.0, decompress=1.0, warmup=2.0):
    return {"val_bpb": bpb, "compliance": compliance,
            "seconds": {"decompress": decompress, "warmup": warmup, "scoring": scoring,
                        "total": decompress + warmup + scoring}}  # fmt: skip


H100X8 = "8x NVIDIA H100 80GB HBM3"  # what the train stage measures on the budgets' hardware


def summary_metrics(tmp_path, **change):
    provenance = {"train_documents": 50, "val_documents": 2, "overlap": 0, "passed": True}
    files = {
        "train.json": {"train_seconds": 100.0, "hardware": H100X8, "final_val": {"val_bpb": 1.9},
                       "final_val_documents": DOCS, "provenance": provenance},
        "calibrate.json": {"seconds": 5.0, "provenance": provenance},
        "export.json": {"weights": "ema", "documents": DOCS, "prequant_ema": {"val_bpb": 1.8},
                        "prequant_raw": {"val_bpb": 1.9}},
        "quantize.json": {"documents": DOCS, "dequantized": {"val_bpb": 1.85}},
        "size.json": {"model_bytes": 900, "code_bytes": 100, "total_bytes": 1000, "limit_bytes": 16_000_000,
                      "fits": True},
        "compress.json": {"model_bytes": 900},
        "eval.json": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "sliding": eval_mode(1.84),
                                                   "lora_ttt": eval_mode(1.80)}},
    }  # fmt: skip
    for name, update in change.items():
        files[f"{name}.json"] = {**files[f"{name}.json"], **update}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path


COMPLIANCE = compliance_cfg(hardware="8xH100", train_budget_seconds=600.0, eval_budget_seconds=600.0)


# --- records folders: the runs the records writer reads ---


def records_summary() -> dict:
    """metrics/summary.json of a run that passes every check (the summary stage's shape: each mode's clock as
    scoring with TTT, ``practice``, and with decompression and warm-up, ``strict``)."""

    def mode(parts: tuple[float, float, float]) -> dict:
        names = ("decompress_seconds", "warmup_seconds", "scoring_seconds")
        return {**dict(zip(names, parts, strict=True)), "practice_seconds": parts[2], "strict_seconds": sum(parts),
                "budget_seconds": 600.0, "within": True, "within_strict": sum(parts) <= 600.0,
                "audit": "compliant"}  # fmt: skip

    return {
        "documents": {"count": 50000, "targets": 40_000_000, "bytes": 151_000_000, "sha256": "ab" * 32},
        "ladder": {
            "prequant_ema": 1.09,
            "dequantized": 1.1,
            "model_bin": 1.1,
            "sliding": 1.08,
            "lora_ttt": 1.06,
            "chunk_sgd": 1.07,
        },
        "bytes": {"model": 15_880_000, "code": 20_000, "total": 15_900_000, "limit": 16_000_000, "fits": True},
        "compliance": {
            "train": {
                "hardware": "8x NVIDIA H100 80GB HBM3",
                "train_seconds": 588.0,
                "calibrate_seconds": 9.5,
                "total_seconds": 597.5,
                "budget_seconds": 600.0,
                "within": True,
            },
            "eval": {"sliding": mode((3.0, 0.0, 30.0)), "lora_ttt": mode((20.0, 5.0, 470.0))},
            "artifact": {"bytes": 15_900_000, "limit": 16_000_000, "within": True},
            "data": {"val_documents": 50000, "train_documents": 3000, "overlap": 0, "passed": True},
        },
    }


@functools.cache
def _program(seed: int) -> str:
    """This checkout's counted program for params.yaml at ``seed`` (what a run scored with this code holds in
    artifacts/submission/)."""
    params = read_params(ROOT / "params.yaml")
    params["train"]["seed"] = seed
    return program(params, ROOT)


def records_workspace(root, seed: int = 42, shift: float = 0.0, summary: dict | None = None):
    """A run of params.yaml at ``seed`` whose scores are records_summary()'s + ``shift``."""
    summary = summary or records_summary()
    summary["ladder"] = {rung: round(bpb + shift, 8) for rung, bpb in summary["ladder"].items()}
    (root / "metrics/train/plots/metrics/train").mkdir(parents=True)
    (root / "artifacts/submission").mkdir(parents=True)
    params = read_params(ROOT / "params.yaml")
    params["train"]["seed"] = seed
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "metrics/summary.json").write_text(json.dumps(summary))
    modes = {m: {"val_bpb": bpb, "val_loss": round(bpb * 2.1, 8)} for m, bpb in summary["ladder"].items()}
    (root / "metrics/eval.json").write_text(json.dumps({"modes": modes}))
    (root / "metrics/train.json").write_text(json.dumps({"steps": 4900, "commit": "c0ffee"}))
    (root / "metrics/quantize_tensors.csv").write_text("name,layer,rel_error\nw,0,0.1\n")
    (root / "metrics/train/plots/metrics/train/loss.tsv").write_text("step\tloss\n1\t7.0\n2\t6.0\n")
    (root / "artifacts/submission/model.bin").write_bytes(b"PGOLF\x00model")
    (root / "artifacts/submission/train_gpt.py").write_text(_program(seed))
    return root
