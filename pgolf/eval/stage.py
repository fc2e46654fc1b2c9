"""The evaluate stage: val_bpb of the counted artifact, in every enabled mode, with its audits.

The model comes from ``artifacts/submission/model.bin`` only (decompressed, dequantized, rebuilt from the config
in its manifest), never from a float checkpoint, so the reported number belongs to the bytes the size stage
counted. The validation tokens and byte sidecar come from ``data/shards``; the bytes audit reads the val documents'
text from ``data/docs`` when the source has it (the published shards do not).

Audits run by the stage: (a) bytes, for every mode: the scored byte total equals the UTF-8 size of the scored
documents; (b) score-first, for every TTT mode, on the first ``eval.audit.docs`` documents: perturbing a document
after its middle leaves every score that was due before that point unchanged; (c) with LoRA TTT's n-gram tilt,
its causality and normalization audits (:func:`ngram_audits`). A mode is reported ``compliant``
only when every audit that applies to it ran and passed; ``unaudited`` when one was skipped (no val text, or
``eval.audit.score_first: false``); ``violated`` when one failed or the mode re-scores (multi-phase TTT).

``plain`` is the ladder's ``model_bin`` rung: the one scorer (:func:`pgolf.eval.score.score_model`) on the
decoded weights, which must equal the quantize stage's ``dequantized`` rung to the last bit.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from pgolf.compress import submission
from pgolf.compress.container import MODEL_BIN
from pgolf.data.docs import read_docs
from pgolf.dist import dist_info
from pgolf.eval import audit, ngram
from pgolf.eval.bpb import ValData, load_val
from pgolf.eval.common import EvalContext, ModeResult, TokenRecorder
from pgolf.eval.config import EvalConfig
from pgolf.eval.modes import TTT_MODES, context, enabled_modes, run_mode
from pgolf.eval.score import ScoreConfig, document_set, scored_documents
from pgolf.eval.ttt_lora import doc_queue, scoring_steps, tilt_audit_scorer
from pgolf.model.gpt import GPT


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


def score_first(name: str, model: GPT, val: ValData, score: ScoreConfig, cfg: EvalConfig, looped: bool) -> dict:
    """The score-first audit of one mode on the first ``cfg.audit.docs`` documents, cut in the middle of the
    longest of them. Eager: so few documents make batches of their own shapes, each a graph to compile, and the
    compiled forward scores like the eager one (tests/test_eval_compile.py)."""
    small = score.model_copy(update={"docs": cfg.audit.docs})
    docs = scored_documents(val, small, model.cfg.bos_id)
    doc = max(docs, key=lambda d: d.num_targets)
    ctx = dataclasses.replace(context(model, cfg, looped), compile_backend=None)
    runs = iter(("original", "perturbed"))

    def run(v: ValData, recorder: TokenRecorder) -> ModeResult:
        label, start = next(runs), time.perf_counter()
        say(ctx, f"evaluate: score-first audit of {name}: the {label} run on {len(docs)} documents ...")
        result = run_mode(name, model, v, docs, small, cfg, dataclasses.replace(ctx, recorder=recorder))
        say(ctx, f"evaluate: score-first audit of {name}: the {label} run took {time.perf_counter() - start:.1f} s")
        return result

    result = audit.score_first_audit(run, val, doc, doc.num_targets // 2, model.cfg.vocab_size)
    say(ctx, f"evaluate: score-first audit of {name}: {'passed' if result.passed else 'FAILED'} "
             f"({result.checked} protected scores, {result.violations} changed)")  # fmt: skip
    return {"passed": result.passed, "checked": result.checked, "violations": result.violations,
            "max_abs_diff": result.max_abs_diff}  # fmt: skip


def ngram_audits(model: GPT, val: ValData, score: ScoreConfig, cfg: EvalConfig) -> dict[str, audit.AuditResult]:
    """The n-gram tilt's own audits on the first ``cfg.audit.docs`` documents, in LoRA TTT's scoring order:
    causality (a changed token moves no hint of a target scored at the same or an earlier step,
    :func:`pgolf.eval.ngram.causality_audit`) and normalization (every candidate target scored through the mode's
    own scorer: a full distribution that does not depend on the realized target, C1/C2), on random model
    log-probabilities at the positions the tilt boosts."""
    ttt = cfg.lora_ttt
    docs = scored_documents(val, score.model_copy(update={"docs": cfg.audit.docs}), model.cfg.bos_id)
    steps = scoring_steps(doc_queue(docs, ttt.batch_docs), ttt)
    causal = ngram.causality_audit(val.tokens, steps, ttt.ngram_tilt.order)
    hint, confidence = ngram.precompute_hints(val.tokens, steps, ttt.ngram_tilt.order)
    beta = ngram.tilt_boost(hint, confidence, ttt.ngram_tilt.params())
    rows = np.flatnonzero(beta > 0)[:8]
    if rows.size == 0:  # nothing boosted on so few documents: check the untilted positions' scorer all the same
        rows = np.flatnonzero(hint >= 0)[:8] if (hint >= 0).any() else np.arange(1, min(9, len(val.tokens)))
    log_probs = torch.randn(rows.size, model.cfg.vocab_size, generator=torch.Generator().manual_seed(0))
    norm = ngram.normalization_audit(log_probs.log_softmax(-1).double(), torch.from_numpy(hint[rows]),
                                     torch.from_numpy(beta[rows]), tilt_audit_scorer)  # fmt: skip
    return {"ngram_causality": causal, "ngram_normalization": norm}


def say(ctx: EvalContext, line: str) -> None:
    """One progress line on rank 0 (through tqdm, so it does not break a bar), when ``eval.progress`` is on."""
    if ctx.progress and ctx.rank == 0:
        tqdm.write(line)


def mode_seconds(decompress: float, result: ModeResult) -> dict:
    """The evaluation clock of one mode, each part once: decompressing model.bin, the compile warm-up, scoring with
    its TTT updates (timed together; ``ttt_parts`` says how much of it the updates took), and their total."""
    warm = float(result.compile.get("warmup_seconds", 0.0))
    timed = float(result.seconds["eval"])
    parts = {k: round(v, 3) for k, v in result.seconds.items() if k != "eval"}
    return {"decompress": round(decompress, 3), "warmup": round(warm, 3), "scoring": round(timed, 3),
            "total": round(decompress + warm + timed, 3), "ttt_parts": parts}  # fmt: skip


def run_evaluate(
    score: ScoreConfig, cfg: EvalConfig, submission_dir: Path, shards: Path, tokenizer: Path, docs_dir: Path
) -> dict:
    """metrics/eval.json's content: the document set, then per mode val_loss, val_bpb, scored tokens and bytes,
    seconds, audits and the measured compliance (:func:`pgolf.eval.audit.compliance_status`)."""
    start = time.perf_counter()
    model, looped = submission.load_model(submission_dir / MODEL_BIN)
    model = model.to(dist_info().device)
    decompress = time.perf_counter() - start
    val = load_val(shards, tokenizer)
    docs = scored_documents(val, score, model.cfg.bos_id)
    expected = expected_bytes(docs_dir, len(docs))
    ctx = context(model, cfg, looped)
    modes = {}
    for name in enabled_modes(cfg):
        result = run_mode(name, model, val, docs, score, cfg, ctx)
        summary = result.summary()
        summary["seconds"] = mode_seconds(decompress, result)
        byte_check = None if expected is None else audit.bytes_audit(result.totals, expected)
        audits: dict[str, bool | None] = {"bytes": None if byte_check is None else byte_check.passed}
        summary["audit"] = dict(audits)
        failures = []
        if byte_check is not None and not byte_check.passed:
            failures.append(f"{name}: the bytes audit failed: {byte_check.message} (the byte counts of "
                            f"{shards}/val_bytes_*.bin against the text of {docs_dir}/val.jsonl)")  # fmt: skip
        if name in TTT_MODES:
            detail = score_first(name, model, val, score, cfg, looped) if cfg.audit.score_first else None
            audits["score_first"] = None if detail is None else detail["passed"]
            summary["audit"]["score_first"] = detail
            if detail is not None and not detail["passed"] and result.passes == 1:  # claims score-first, is not
                failures.append(f"{name}: the score-first audit failed: {detail['violations']} of "
                                f"{detail['checked']} scores changed when later tokens changed")  # fmt: skip
        if name == "lora_ttt" and cfg.lora_ttt.ngram_tilt.enabled:
            for key, check in ngram_audits(model, val, score, cfg).items():
                audits[key] = check.passed
                summary["audit"][key] = dataclasses.asdict(check)
                if not check.passed:
                    failures.append(f"{name}: the {key} audit of the n-gram tilt failed: {check.message}")
        summary["audit_failures"] = failures
        summary["compliance"] = audit.compliance_status(audits, result.passes)
        summary["compliant"] = summary["compliance"] == audit.COMPLIANT
        modes[name] = summary
    return {"documents": document_set(val, docs), "looped": looped, "byte_count": val.byte_count, "modes": modes}


def audit_failures(metrics: dict) -> list[str]:
    """What makes the stage fail after writing its metrics: a failed bytes audit in any mode (a wrong byte count
    means every val_bpb is wrong), a failed score-first audit in a mode that scores each target once (multi-phase
    TTT re-scores by design: reported ``violated``, not an error)."""
    return [line for m in metrics["modes"].values() for line in m["audit_failures"]]


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
