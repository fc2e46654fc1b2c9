"""Stage evaluate: val_bpb of artifacts/submission/model.bin (never the float checkpoint) -- the plain score (the
ladder's model_bin rung), then every enabled mode: sliding window, phased score-first LoRA TTT, chunk SGD TTT,
multi-phase global TTT (re-scores: violated) -- with their audits -> metrics/eval.json, metrics/eval_phases.csv.

The model comes from model.bin only (decompressed, dequantized, rebuilt from the config in its manifest), so the
reported number belongs to the bytes the size stage counted. Audits (:mod:`pgolf.eval.audit`): (a) bytes, for every
mode: the scored byte total equals the UTF-8 size of the scored documents' text (from data/docs when the source has
it); (b) score-first, for every TTT mode, on the first ``eval.audit.docs`` documents; (c) with LoRA TTT's n-gram
tilt, its causality and normalization audits. A mode is ``compliant`` only when every audit that applies to it ran
and passed; ``unaudited`` when one was skipped; ``violated`` when one failed or the mode re-scores. A failed audit
fails the stage after its metrics are written.
"""

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf import dist
from pgolf.cli import parse_paths, run
from pgolf.compress import submission
from pgolf.compress.container import MODEL_BIN
from pgolf.errors import PgolfError
from pgolf.eval import audit
from pgolf.eval.modes import MODES, EvalConfig, context, enabled_modes, run_mode
from pgolf.files import write_csv, write_json
from pgolf.model.gpt import GPT
from pgolf.params import load_section
from pgolf.runcard import run_card, take_lease
from pgolf.score.bpb import ValData, load_val
from pgolf.score.documents import Document
from pgolf.score.scorer import ScoreConfig, document_set, scored_documents
from pgolf.score.scores import EvalContext, ModeResult


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    submission: Path = Path("artifacts/submission")
    shards: Path = Path("data/shards")
    tokenizer: Path = Path("artifacts/tokenizer")
    docs: Path = Path("data/docs")
    metrics: Path = Path("metrics/eval.json")
    phases: Path = Path("metrics/eval_phases.csv")


PHASE_COLUMNS = ["mode", "segment", "documents", "val_bpb", "val_bpb_so_far"]


def mode_seconds(decompress: float, result: ModeResult) -> dict:
    """The evaluation clock of one mode, each part once: decompressing model.bin, the compile warm-up, scoring with
    its TTT updates (timed together; ``ttt_parts`` says how much of it the updates took), and their total."""
    warm = float(result.compile.get("warmup_seconds", 0.0))
    timed = float(result.seconds["eval"])
    parts = {k: round(v, 3) for k, v in result.seconds.items() if k != "eval"}
    return {"decompress": round(decompress, 3), "warmup": round(warm, 3), "scoring": round(timed, 3),
            "total": round(decompress + warm + timed, 3), "ttt_parts": parts}  # fmt: skip


def evaluate_mode(
    name: str, model: GPT, val: ValData, docs: list[Document], score: ScoreConfig, cfg: EvalConfig,
    ctx: EvalContext, expected: int | None, decompress: float, paths: Paths,
) -> dict:  # fmt: skip
    """One mode's metrics: its scores, clock, audits, failures and compliance."""
    result = run_mode(name, model, val, docs, score, cfg, ctx)
    summary = result.summary()
    summary["seconds"] = mode_seconds(decompress, result)
    byte_check = None if expected is None else audit.bytes_audit(result.totals, expected)
    audits: dict[str, bool | None] = {"bytes": None if byte_check is None else byte_check.passed}
    summary["audit"] = dict(audits)
    failures = []
    if byte_check is not None and not byte_check.passed:
        failures.append(f"{name}: the bytes audit failed: {byte_check.message} (the byte counts of "
                        f"{paths.shards}/val_bytes_*.bin against the text of {paths.docs}/val.jsonl)")  # fmt: skip
    if MODES[name].ttt:
        detail = audit.score_first(name, model, val, score, cfg, ctx.looped) if cfg.audit.score_first else None
        audits["score_first"] = None if detail is None else detail["passed"]
        summary["audit"]["score_first"] = detail
        if detail is not None and not detail["passed"] and result.passes == 1:  # claims score-first, is not
            failures.append(f"{name}: the score-first audit failed: {detail['violations']} of "
                            f"{detail['checked']} scores changed when later tokens changed")  # fmt: skip
    if name == "lora_ttt" and cfg.lora_ttt.ngram_tilt.enabled:
        from pgolf.eval.ngram_audit import ngram_audits  # the tilt's code: carried only when it is on

        for key, check in ngram_audits(model, val, score, cfg).items():
            audits[key] = check.passed
            summary["audit"][key] = dataclasses.asdict(check)
            if not check.passed:
                failures.append(f"{name}: the {key} audit of the n-gram tilt failed: {check.message}")
    summary["audit_failures"] = failures
    summary["compliance"] = audit.compliance_status(audits, result.passes)
    summary["compliant"] = summary["compliance"] == audit.COMPLIANT
    return summary


def phase_rows(metrics: dict) -> list[dict]:
    """One row per TTT segment / phase (dvc plots: bpb by phase): LoRA TTT rows give the bpb of the documents scored
    between two global-SGD phases and of all scored so far; multi-phase rows each pass."""
    rows = []
    for name, m in metrics["modes"].items():
        for i, p in enumerate(m["phases"]):
            bpb = p.get("segment_val_bpb", p.get("val_bpb"))
            rows.append({"mode": name, "segment": i, "documents": p.get("documents", ""), "val_bpb": bpb,
                         "val_bpb_so_far": p.get("val_bpb_so_far", bpb)})  # fmt: skip
    return rows


def evaluate(score: ScoreConfig, cfg: EvalConfig, paths: Paths) -> dict:
    """metrics/eval.json's content (written on rank 0 with the phases table): the document set, then per mode
    val_loss, val_bpb, scored tokens and bytes, seconds, audits and the measured compliance."""
    start = time.perf_counter()
    model, looped = submission.load_model(paths.submission / MODEL_BIN)
    model = model.to(dist.dist_info().device)
    decompress = time.perf_counter() - start
    val = load_val(paths.shards, paths.tokenizer)
    docs = scored_documents(val, score, model.cfg.bos_id)
    expected = audit.expected_bytes(paths.docs, len(docs))
    ctx = context(model, cfg, looped)
    modes = {name: evaluate_mode(name, model, val, docs, score, cfg, ctx, expected, decompress, paths)
             for name in enabled_modes(cfg)}  # fmt: skip
    metrics = {"documents": document_set(val, docs), "looped": looped, "byte_count": val.byte_count, "modes": modes,
               "run": run_card(start, dist.dist_info())}  # fmt: skip
    if dist.dist_info().is_main:
        write_json(paths.metrics, metrics)
        write_csv(paths.phases, PHASE_COLUMNS, phase_rows(metrics))
    return metrics


def audit_failures(metrics: dict) -> list[str]:
    """What fails the stage after its metrics are written: a failed bytes audit in any mode (a wrong byte count
    means every val_bpb is wrong), a failed score-first audit in a mode that scores each target once (multi-phase
    TTT re-scores by design: reported ``violated``, not an error), a failed n-gram tilt audit."""
    return [line for m in metrics["modes"].values() for line in m["audit_failures"]]


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    take_lease(1)  # a device of a shared box (PGOLF_LEASE_DIR), before anything touches CUDA
    score, cfg = load_section("score", paths.params), load_section("eval", paths.params)
    dist.init(load_section("train", paths.params).dist_timeout_seconds)  # the launch is train's (dvc.yaml)
    try:
        metrics = evaluate(score, cfg, paths)
    finally:
        dist.shutdown()
    if not dist.dist_info().is_main:
        return
    docs = metrics["documents"]
    print(f"evaluate: {docs['count']} documents, {docs['targets']:,} targets, {docs['bytes']:,} bytes "
          f"(sha256 {docs['sha256'][:12]})")  # fmt: skip
    for name, m in metrics["modes"].items():
        print(f"evaluate {name:12s} val_bpb {m['val_bpb']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"{m['seconds']['total']:.1f}s  {m['compliance']}")  # fmt: skip
    if failures := audit_failures(metrics):
        raise PgolfError(f"evaluate: {'; '.join(failures)}; the figures in {paths.metrics} are not to be trusted")


if __name__ == "__main__":
    run(main)
