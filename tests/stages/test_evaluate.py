"""The evaluate stage scores the counted artifact: every mode on the same documents with passing audits (and
multi-phase violated), the model.bin rung equal to the dequantized one, a failed bytes audit failing the stage
after its metrics are written."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import parse_section, read_params
from pgolf.quant.formats import load_quantized
from tests.helpers.common import COMPRESS_EXTRAS, ROOT, needs
from tests.helpers.compress import write_quant_dir, write_submission
from tests.helpers.config import score_cfg

pytestmark = needs(*COMPRESS_EXTRAS)  # the ans and zstd codecs, minify


@pytest.mark.slow
def test_evaluate_stage_scores_the_counted_artifact_with_passing_audits(built, tmp_path):
    """compress -> evaluate as DVC runs them: every mode scores the same documents, bytes audited against the
    val text, score-first audited for the TTT modes (and failing, flagged non-compliant, for multi-phase)."""
    docs, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    params = read_params(ROOT / "params.yaml")
    small = {"seq_len": 64, "batch_windows": 8}
    params["score"] = {"docs": 4, **small}
    params["eval"].update(progress=False, sliding={"enabled": True, "stride": 16, **small},
                          multi_phase={**params["eval"]["multi_phase"], "enabled": True, "seq_len": 64,
                                       "stride": 16, "chunk_tokens": 512},
                          audit={"score_first": True, "docs": 2})  # fmt: skip
    params["eval"]["lora_ttt"].update(chunk_size=32, context=64, batch_docs=2, phases=[2], rank=4)
    params["eval"]["lora_ttt"]["global_sgd"].update(chunk_tokens=512, seq_len=64)
    params["eval"]["chunk_sgd"].update(chunk_tokens=512, seq_len=64, stride=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.evaluate", "--params", tmp_path / "params.yaml", "--submission",
           tmp_path / "submission", "--shards", shards, "--tokenizer", tokenizer, "--docs", docs,
           "--metrics", tmp_path / "eval.json", "--phases", tmp_path / "phases.csv"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    modes = metrics["modes"]
    assert set(modes) == {"plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase"}
    assert metrics["documents"]["count"] == 4 and len(metrics["documents"]["sha256"]) == 64
    assert len({(m["tokens"], m["bytes"]) for m in modes.values()}) == 1
    assert all(m["audit"]["bytes"] is True for m in modes.values())
    assert all(modes[n]["audit"]["score_first"]["passed"] for n in ("lora_ttt", "chunk_sgd"))
    assert not modes["multi_phase"]["audit"]["score_first"]["passed"]
    assert {n: m["compliance"] for n, m in modes.items()} == {"plain": "compliant", "sliding": "compliant",
        "lora_ttt": "compliant", "chunk_sgd": "compliant", "multi_phase": "violated"}  # fmt: skip
    assert [m["compliant"] for m in modes.values()] == [True] * 4 + [False]
    for m in modes.values():  # each part of the evaluation clock once, and their total
        s = m["seconds"]
        assert s["total"] == pytest.approx(s["decompress"] + s["warmup"] + s["scoring"], abs=2e-3)
    assert (tmp_path / "phases.csv").read_text().startswith("mode,segment,documents,val_bpb")


def _eval_paths(tmp_path: Path, shards: Path, tokenizer: Path, docs: Path):
    from stages.evaluate import Paths

    return Paths(submission=tmp_path / "submission", shards=shards, tokenizer=tokenizer, docs=docs,
                 metrics=tmp_path / "eval.json", phases=tmp_path / "phases.csv")  # fmt: skip


@pytest.mark.slow
def test_model_bin_rung_equals_the_dequantized_rung_and_skipped_audits_are_unaudited(built, tmp_path):
    """The evaluate stage's plain score of model.bin is the quantize stage's dequantized score to the last bit (same
    weights, same scorer, same documents); with the score-first audit off and no val text, nothing is compliant."""
    from pgolf.eval.modes import EvalConfig
    from pgolf.quant.quantize import dequantized_model
    from pgolf.score.bpb import load_val
    from pgolf.score.scorer import score_model, scored_documents
    from pgolf.score.scores import EvalContext
    from stages.evaluate import evaluate

    _, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    score = score_cfg(docs=3, seq_len=64, batch_windows=8)
    params = read_params(ROOT / "params.yaml")["eval"]
    for mode in ("sliding", "chunk_sgd", "multi_phase"):
        params[mode]["enabled"] = False
    params.update(progress=False, audit={"score_first": False, "docs": 2})
    params["lora_ttt"].update(chunk_size=32, context=64, batch_docs=2, phases=[2], rank=4)
    cfg = parse_section(params, "eval", EvalConfig)
    metrics = evaluate(score, cfg, _eval_paths(tmp_path, shards, tokenizer, tmp_path / "no-docs"))
    entries, manifest = load_quantized(quant)
    model = dequantized_model(entries, manifest["model_config"])
    val = load_val(shards, tokenizer)
    dequantized = score_model(model, val, scored_documents(val, score, meta["bos_id"]), score, EvalContext(True))
    assert metrics["modes"]["plain"]["val_bpb"] == dequantized.totals.val_bpb  # exactly
    assert metrics["modes"]["plain"]["tokens"] == metrics["documents"]["targets"]
    assert {n: m["compliance"] for n, m in metrics["modes"].items()} == {"plain": "unaudited", "lora_ttt": "unaudited"}
    assert metrics["modes"]["lora_ttt"]["audit"] == {"bytes": None, "score_first": None}
    assert not any(m["compliant"] for m in metrics["modes"].values())


@pytest.mark.slow
def test_a_failed_bytes_audit_fails_the_evaluate_stage_after_writing_its_metrics(built, tmp_path):
    """The val text holds one byte more than the sidecar counts: every mode is `violated`, and the stage exits
    non-zero naming the audit and both files, after metrics/eval.json is written (nothing is lost)."""
    from pgolf.data import docs as doc_io

    docs, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    altered = tmp_path / "docs"
    shutil.copytree(docs, altered)
    val = list(doc_io.read_docs(altered, "val"))
    doc_io.write_docs(altered, "val", [doc_io.Doc(d.id, d.text + ("!" if i == 0 else "")) for i, d in enumerate(val)])
    params = read_params(ROOT / "params.yaml")
    params["score"] = {"docs": 2, "seq_len": 64, "batch_windows": 8}
    for mode in ("sliding", "lora_ttt", "chunk_sgd", "multi_phase"):
        params["eval"][mode]["enabled"] = False
    params["eval"].update(progress=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.evaluate", "--params", tmp_path / "params.yaml", "--submission",
           tmp_path / "submission", "--shards", shards, "--tokenizer", tokenizer, "--docs", altered,
           "--metrics", tmp_path / "eval.json", "--phases", tmp_path / "phases.csv"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "plain: the bytes audit failed: scored" in result.stderr and "(-1)" in result.stderr
    assert "val_bytes_*.bin" in result.stderr and "val.jsonl" in result.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert (
        metrics["modes"]["plain"]["compliance"] == "violated" and metrics["modes"]["plain"]["audit"]["bytes"] is False
    )
