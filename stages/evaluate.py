"""Stage evaluate: val_bpb of artifacts/submission/model.bin (never the float checkpoint) -- the plain score (the
ladder's model_bin rung), then every enabled mode: sliding window, phased score-first LoRA TTT, chunk SGD TTT,
multi-phase global TTT (re-scores: violated) -- with the bytes and score-first audits -> metrics/eval.json,
metrics/eval_phases.csv."""

import argparse
from pathlib import Path

from pgolf import dist
from pgolf.cli import run
from pgolf.config import load_section
from pgolf.errors import PgolfError
from pgolf.eval.config import EvalConfig
from pgolf.eval.score import ScoreConfig
from pgolf.eval.stage import audit_failures, run_evaluate, write_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--submission", default="artifacts/submission")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--docs", default="data/docs")
    parser.add_argument("--metrics", default="metrics/eval.json")
    parser.add_argument("--phases", default="metrics/eval_phases.csv")
    args = parser.parse_args()

    score = load_section("score", ScoreConfig, args.params)
    cfg = load_section("eval", EvalConfig, args.params)
    info = dist.init()
    try:
        metrics = run_evaluate(score, cfg, Path(args.submission), Path(args.shards), Path(args.tokenizer),
                               Path(args.docs))  # fmt: skip
    finally:
        dist.shutdown()
    if not info.is_main:
        return
    write_metrics(metrics, Path(args.metrics), Path(args.phases))
    docs = metrics["documents"]
    print(f"evaluate: {docs['count']} documents, {docs['targets']:,} targets, {docs['bytes']:,} bytes "
          f"(sha256 {docs['sha256'][:12]})")  # fmt: skip
    for name, m in metrics["modes"].items():
        print(f"evaluate {name:12s} val_bpb {m['val_bpb']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"{m['seconds']['total']:.1f}s  {m['compliance']}")  # fmt: skip
    if failures := audit_failures(metrics):
        raise PgolfError(f"evaluate: {'; '.join(failures)}; the figures in {args.metrics} are not to be trusted")


if __name__ == "__main__":
    run(main)
