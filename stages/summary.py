"""Stage summary: the run at a glance from the stages' metrics -- the score ladder on one document set, the
bytes, and the measured compliance (train + Hessian seconds, evaluation seconds per mode, artifact bytes, data
provenance, audits), the device time and its cost -> metrics/summary.json, metrics/headline.json (the DVC
metrics) and metrics/ladder.csv."""

from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.files import write_csv, write_json
from pgolf.params import load_section
from pgolf.report.summary import LADDER_COLUMNS, ComplianceConfig, build, headline, ladder_rows


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    metrics_dir: Path = Path("metrics")
    out: Path = Path("metrics/summary.json")
    ladder: Path = Path("metrics/ladder.csv")
    headline: Path = Path("metrics/headline.json")


def summarize(cfg: ComplianceConfig, paths: Paths) -> dict:
    """Build the summary from the metrics files in ``paths.metrics_dir`` and write its three files."""
    summary = build(cfg, paths.metrics_dir)
    write_json(paths.out, summary)
    write_json(paths.headline, headline(summary))
    write_csv(paths.ladder, LADDER_COLUMNS, ladder_rows(summary))
    return summary


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    summary = summarize(load_section("compliance", paths.params), paths)
    docs, c = summary["documents"], summary["compliance"]
    rungs = " -> ".join(f"{name} {bpb:.4f}" for name, bpb in summary["ladder"].items())
    print(f"summary: {docs['count']} documents ({docs['bytes']:,} bytes): {rungs}")
    reported = c["eval"][c["reported_mode"]]
    timing = "" if c["timing_applies"] else f" (clocks informative: not {c['train']['budget_hardware']})"
    print(f"summary: {summary['bytes']['total']:,} bytes (fits {summary['bytes']['fits']}); train + Hessians "
          f"{c['train']['total_seconds']:.1f}s on {c['train']['hardware']}; {c['reported_mode']} evaluation "
          f"{reported['practice_seconds']:.1f}s scoring + TTT ({reported['strict_seconds']:.1f}s strict), audit "
          f"{reported['audit']}; compliant {c['compliant']}{timing}")  # fmt: skip
    if (d := summary["device_time"])["device_seconds"] is not None:
        cost = f", cost {d['cost']:.2f} at {d['device_hour_price']} per device-hour" if "cost" in d else ""
        print(f"summary: {d['device_seconds']:.1f} device-seconds ({d['device_hours']:.3f} device-hours){cost}")
    if not summary["model_bin_equals_dequantized"]:
        print("summary: WARNING the model.bin rung differs from the dequantized rung (same weights and scorer: a "
              "decode or scoring bug, or a multi-rank sum order)")  # fmt: skip


if __name__ == "__main__":
    run(main)
