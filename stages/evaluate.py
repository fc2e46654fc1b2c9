"""Stage evaluate: val_bpb of artifacts/submission/model.bin (never the float checkpoint) in every enabled mode --
plain, sliding window, phased score-first LoRA TTT, chunk SGD TTT, multi-phase global TTT (non-compliant) -- with
the bytes and score-first audits -> metrics/eval.json, metrics/eval_phases.csv."""

import argparse
from pathlib import Path

from pgolf import dist
from pgolf.cli import run
from pgolf.config import load_section
from pgolf.eval.config import EvalConfig
from pgolf.eval.stage import run_evaluate, write_metrics


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

    cfg = load_section("eval", EvalConfig, args.params)
    info = dist.init()
    try:
        metrics = run_evaluate(cfg, Path(args.submission), Path(args.shards), Path(args.tokenizer), Path(args.docs))
    finally:
        dist.shutdown()
    if not info.is_main:
        return
    write_metrics(metrics, Path(args.metrics), Path(args.phases))
    for name, m in metrics["modes"].items():
        flag = "" if m["compliant"] else "  (NOT compliant: re-scores trained tokens)"
        print(f"evaluate {name:12s} val_bpb {m['val_bpb']:.4f}  val_loss {m['val_loss']:.4f}  "
              f"{m['tokens']:,} tokens  {m['seconds']['eval']:.1f}s{flag}")  # fmt: skip


if __name__ == "__main__":
    run(main)
