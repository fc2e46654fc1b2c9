"""The evaluate stage: val_bpb of the counted artifact, in every enabled mode, with its audits.

The model comes from ``artifacts/submission/model.bin`` only (decompressed, dequantized, rebuilt from the config
in its manifest), never from a float checkpoint, so the reported number belongs to the bytes the size stage
counted. The validation tokens and byte sidecar come from ``data/shards``; the bytes audit reads the val documents'
text from ``data/docs`` when the source has it (the published shards do not).

Audits run by the stage: (a) bytes, for every mode: the scored byte total equals the UTF-8 size of the scored
documents; (b) score-first, for every TTT mode, on the first ``eval.audit.docs`` documents: perturbing a document
after its middle leaves every score that was due before that point unchanged. Multi-phase TTT is reported with
``compliant: false`` and its audit result (it re-scores trained tokens, so the audit fails, as it should).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from pgolf.compress import submission
from pgolf.data.docs import read_docs
from pgolf.dist import dist_info
from pgolf.eval import audit
from pgolf.eval.bpb import ValData, load_val
from pgolf.eval.config import EvalConfig
from pgolf.eval.modes import enabled_modes, run_mode, scored_documents
from pgolf.model.gpt import GPT

TTT_MODES = ("lora_ttt", "chunk_sgd", "multi_phase")


def expected_bytes(docs_dir: Path, count: int) -> int | None:
    """UTF-8 bytes of the first ``count`` val documents' text, or None when the source has no text."""
    if not (docs_dir / "val.jsonl").is_file():
        return None
    texts = []
    for doc in read_docs(docs_dir, "val"):
        if len(texts) == count:
            break
        texts.append(doc.text)
    return audit.text_bytes(texts)


def score_first(name: str, model: GPT, val: ValData, cfg: EvalConfig, looped: bool) -> dict:
    """The score-first audit of one mode on the first ``cfg.audit.docs`` documents, cut in the middle of the
    longest of them. Eager: so few documents make batches of their own shapes, each a graph to compile, and the
    compiled forward scores like the eager one (tests/test_eval_compile.py)."""
    small = cfg.model_copy(update={"max_docs": cfg.audit.docs, "progress": False, "compile": False})
    docs = scored_documents(val, small, model.cfg.bos_id)
    doc = max(docs, key=lambda d: d.num_targets)
    result = audit.score_first_audit(lambda v, rec: run_mode(name, model, v, small, looped, rec), val, doc,
                                     doc.num_targets // 2, model.cfg.vocab_size)  # fmt: skip
    return {"passed": result.passed, "checked": result.checked, "violations": result.violations,
            "max_abs_diff": result.max_abs_diff}  # fmt: skip


def run_evaluate(cfg: EvalConfig, submission_dir: Path, shards: Path, tokenizer: Path, docs_dir: Path) -> dict:
    """metrics/eval.json's content: per mode val_loss, val_bpb, scored tokens and bytes, seconds, flags, audits."""
    start = time.perf_counter()
    model, looped = submission.load_model(submission_dir / submission.MODEL_BIN)
    model = model.to(dist_info().device)
    decompress = time.perf_counter() - start
    val = load_val(shards, tokenizer)
    docs = scored_documents(val, cfg, model.cfg.bos_id)
    expected = expected_bytes(docs_dir, len(docs))
    modes = {}
    for name in enabled_modes(cfg):
        result = run_mode(name, model, val, cfg, looped)
        summary = result.summary()
        summary["seconds"] = {"decompress": round(decompress, 3), **summary["seconds"]}
        bytes_check = None if expected is None else audit.bytes_audit(result.totals, expected).passed
        summary["audit"] = {"bytes": bytes_check}
        if name in TTT_MODES and cfg.audit.score_first:
            summary["audit"]["score_first"] = score_first(name, model, val, cfg, looped)
        modes[name] = summary
    return {"documents": len(docs), "looped": looped, "byte_count": val.byte_count, "modes": modes}


def write_metrics(metrics: dict, path: Path, phases_path: Path) -> None:
    """metrics/eval.json, and one CSV row per TTT segment / phase (dvc plots: bpb by phase): LoRA TTT rows give the
    bpb of the documents scored between two global-SGD phases and of all scored so far; multi-phase rows each pass."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2) + "\n")
    rows = ["mode,segment,documents,val_bpb,val_bpb_so_far"]
    for name, m in metrics["modes"].items():
        for i, p in enumerate(m["phases"]):
            bpb = p.get("segment_val_bpb", p.get("val_bpb"))
            rows.append(f"{name},{i},{p.get('documents', '')},{bpb},{p.get('val_bpb_so_far', bpb)}")
    phases_path.write_text("\n".join(rows) + "\n")
