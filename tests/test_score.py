"""The one scorer and what is built on it: fp32 arithmetic for every rung, the caller's model left as it was,
measured compliance (compliant / unaudited / violated), and the summary's ladder on one document set."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_eval_modes import BOS, one_thread, random_texts, text_val, tiny_model

from pgolf.errors import PgolfError
from pgolf.eval.audit import COMPLIANT, UNAUDITED, VIOLATED, compliance_status
from pgolf.report.summary import ComplianceConfig, build
from pgolf.score.scorer import ScoreConfig, fp32_model, score_model, scored_documents
from pgolf.score.scores import EvalContext
from stages.summary import Paths, summarize

__all__ = ["one_thread"]  # the autouse fixture of test_eval_modes applies here too

SCORE = ScoreConfig(docs=0, seq_len=24, batch_windows=4)


def _score(model, val):
    return score_model(model, val, scored_documents(val, SCORE, BOS), SCORE, EvalContext(True)).totals


def test_a_bf16_model_is_scored_in_fp32_arithmetic_on_its_rounded_values():
    val = text_val(random_texts(5, 10, 40, seed=11))
    model = tiny_model()
    half = copy.deepcopy(model)
    half.tok_emb.weight.data = half.tok_emb.weight.data.to(torch.bfloat16)  # as export casts the embedding
    rounded = copy.deepcopy(model)
    rounded.tok_emb.weight.data = rounded.tok_emb.weight.data.to(torch.bfloat16).float()
    assert _score(half, val) == _score(rounded, val)  # the same values in the same arithmetic: the same bits
    assert _score(half, val) != _score(model, val)  # the rounding itself is a real change of the weights
    assert half.tok_emb.weight.dtype == torch.bfloat16 and fp32_model(model) is model


def test_scoring_leaves_the_live_model_as_it_was():
    val = text_val(random_texts(4, 10, 40, seed=12))
    model = tiny_model().train()
    model.blocks[0].attn.q.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _score(model, val)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("audits", "passes", "status"),
    [
        ({"bytes": True}, 1, COMPLIANT),
        ({"bytes": True, "score_first": True}, 1, COMPLIANT),
        ({"bytes": None}, 1, UNAUDITED),  # no val text: the byte total could not be checked
        ({"bytes": True, "score_first": None}, 1, UNAUDITED),  # eval.audit.score_first: false
        ({"bytes": True, "score_first": False}, 1, VIOLATED),
        ({"bytes": False, "score_first": True}, 1, VIOLATED),
        ({"bytes": False, "score_first": None}, 1, VIOLATED),  # a failure outranks a skip
        ({"bytes": True, "score_first": True}, 3, VIOLATED),  # re-scored targets: never compliant
        ({}, 1, UNAUDITED),
    ],
)
def test_compliance_is_measured(audits, passes, status):
    assert compliance_status(audits, passes) == status


# ------------------------------------------------------------------------------------------ the summary stage

DOCS = {"count": 2, "targets": 100, "bytes": 300, "sha256": "ab" * 32}


def _mode(bpb, compliance="compliant", total=10.0):
    return {"val_bpb": bpb, "compliance": compliance,
            "seconds": {"decompress": 1.0, "warmup": 2.0, "scoring": total - 3.0, "total": total}}  # fmt: skip


def _metrics(tmp_path, **change):
    provenance = {"train_documents": 50, "val_documents": 2, "overlap": 0, "passed": True}
    files = {
        "train.json": {"train_seconds": 100.0, "hardware": "1x cpu", "final_val": {"val_bpb": 1.9},
                       "final_val_documents": DOCS, "provenance": provenance},
        "calibrate.json": {"seconds": 5.0, "provenance": provenance},
        "export.json": {"weights": "ema", "documents": DOCS, "prequant_ema": {"val_bpb": 1.8},
                        "prequant_raw": {"val_bpb": 1.9}},
        "quantize.json": {"documents": DOCS, "dequantized": {"val_bpb": 1.85}},
        "size.json": {"model_bytes": 900, "code_bytes": 100, "total_bytes": 1000, "limit_bytes": 16_000_000,
                      "fits": True},
        "eval.json": {"documents": DOCS, "modes": {"plain": _mode(1.85), "sliding": _mode(1.84),
                                                   "lora_ttt": _mode(1.80)}},
    }  # fmt: skip
    for name, update in change.items():
        files[f"{name}.json"] = {**files[f"{name}.json"], **update}
    for name, content in files.items():
        (tmp_path / name).write_text(json.dumps(content))
    return tmp_path


CFG = ComplianceConfig(hardware="8xH100", train_budget_seconds=600.0, eval_budget_seconds=600.0)


def _flat(tree):
    for value in tree.values():
        yield from _flat(value) if isinstance(value, dict) else [value]


def test_summary_reads_the_ladder_in_order_and_the_measured_checks(tmp_path):
    paths = Paths(metrics_dir=_metrics(tmp_path), out=tmp_path / "summary.json", ladder=tmp_path / "ladder.csv",
                  headline=tmp_path / "headline.json")  # fmt: skip
    summary = summarize(CFG, paths)
    assert summary == build(CFG, tmp_path)
    assert summary["ladder"] == {"prequant_raw": 1.9, "prequant_ema": 1.8, "dequantized": 1.85, "model_bin": 1.85,
                                 "sliding": 1.84, "lora_ttt": 1.80}  # fmt: skip
    assert summary["model_bin_equals_dequantized"] and summary["train_val_equals_prequant_raw"]
    c = summary["compliance"]
    assert c["train"]["total_seconds"] == 105.0 and c["train"]["within"] and c["reported_mode"] == "lora_ttt"
    assert c["eval"]["lora_ttt"]["total_seconds"] == 10.0 and c["artifact"]["within"] and c["data"]["passed"]
    assert c["compliant"] is True
    assert (tmp_path / "ladder.csv").read_text().splitlines()[:2] == ["rung,val_bpb", "prequant_raw,1.9"]
    head = json.loads((tmp_path / "headline.json").read_text())
    assert head["ladder"] == summary["ladder"] and head["compliance"] == {
        "compliant": True,
        "train_seconds": 105.0,
        "eval_seconds": 10.0,
        "audit": "compliant",
    }
    columns = sum(1 for _ in _flat(head))
    assert columns <= 20, columns  # what `dvc metrics show` prints: at most 30 columns with the revision


@pytest.mark.parametrize(
    "change",
    [
        {"eval": {"documents": DOCS, "modes": {"plain": _mode(1.85), "lora_ttt": _mode(1.8, "unaudited")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": _mode(1.85), "lora_ttt": _mode(1.8, "violated")}}},
        {"eval": {"documents": DOCS, "modes": {"plain": _mode(1.85), "lora_ttt": _mode(1.8, total=601.0)}}},
        {"train": {"train_seconds": 596.0}},  # + 5 s of Hessians: over the 600 s
        {"size": {"total_bytes": 16_000_001}},
    ],
    ids=["unaudited", "violated", "slow-eval", "slow-train", "too-big"],
)
def test_a_failed_or_skipped_check_is_not_compliant(tmp_path, change):
    assert build(CFG, _metrics(tmp_path, **change))["compliance"]["compliant"] is False


def test_a_rung_on_other_documents_stops_the_summary_naming_the_file(tmp_path):
    other = {**DOCS, "sha256": "cd" * 32}
    with pytest.raises(PgolfError, match=r"metrics/quantize.json scored another document set"):
        build(CFG, _metrics(tmp_path, quantize={"documents": other}))
    (tmp_path / "eval.json").unlink()
    with pytest.raises(PgolfError, match=r"eval.json: not found; run `dvc repro evaluate`"):
        build(CFG, tmp_path)


def test_a_model_bin_rung_off_the_dequantized_one_is_flagged(tmp_path):
    modes = {"plain": _mode(1.8500001), "lora_ttt": _mode(1.8)}
    summary = build(CFG, _metrics(tmp_path, eval={"documents": DOCS, "modes": modes}))
    assert summary["model_bin_equals_dequantized"] is False
