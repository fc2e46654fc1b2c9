"""Stage summary: the run at a glance from the stages' metrics -- the score ladder on one document set, the
bytes, and the measured compliance (train + Hessian seconds, evaluation seconds per mode, artifact bytes, data
provenance, audits) -> metrics/summary.json, metrics/headline.json (the DVC metrics) and metrics/ladder.csv."""

import argparse
from pathlib import Path

from pgolf.cli import run
from pgolf.config import load_section
from pgolf.report.summary import ComplianceConfig, build, write


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--metrics-dir", default="metrics")
    parser.add_argument("--out", default="metrics/summary.json")
    parser.add_argument("--ladder", default="metrics/ladder.csv")
    parser.add_argument("--headline", default="metrics/headline.json")
    args = parser.parse_args()

    cfg = load_section("compliance", ComplianceConfig, args.params)
    summary = build(cfg, Path(args.metrics_dir))
    write(summary, Path(args.out), Path(args.ladder), Path(args.headline))
    docs = summary["documents"]
    rungs = " -> ".join(f"{name} {bpb:.4f}" for name, bpb in summary["ladder"].items())
    print(f"summary: {docs['count']} documents ({docs['bytes']:,} bytes): {rungs}")
    c = summary["compliance"]
    print(f"summary: {summary['bytes']['total']:,} bytes (fits {summary['bytes']['fits']}); train + Hessians "
          f"{c['train']['total_seconds']:.1f}s on {c['train']['hardware']}; {c['reported_mode']} evaluation "
          f"{c['eval'][c['reported_mode']]['total_seconds']:.1f}s, audit {c['eval'][c['reported_mode']]['audit']}; "
          f"compliant {c['compliant']}")  # fmt: skip
    if not summary["model_bin_equals_dequantized"]:
        print("summary: WARNING the model.bin rung differs from the dequantized rung (same weights and scorer: a "
              "decode or scoring bug, or a multi-rank sum order)")  # fmt: skip


if __name__ == "__main__":
    run(main)
