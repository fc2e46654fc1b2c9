"""The report tests' material: scratch git + DVC repositories, the cells of an experiment table, and the metrics
files the summary stage reads."""

from __future__ import annotations

import json
import subprocess
import sys

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
        "eval.json": {"documents": DOCS, "modes": {"plain": eval_mode(1.85), "sliding": eval_mode(1.84),
                                                   "lora_ttt": eval_mode(1.80)}},
    }  # fmt: skip
    for name, update in change.items():
        files[f"{name}.json"] = {**files[f"{name}.json"], **update}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path


COMPLIANCE = compliance_cfg(hardware="8xH100", train_budget_seconds=600.0, eval_budget_seconds=600.0)
