"""Check a challenge records folder: layout, submission.json fields, per-seed consistency, the logs and timings.

A folder is openai/parameter-golf ``records/track_10min_16mb/<date>_<name>/`` or one that
:mod:`pgolf.report.records` writes. The checks:

* layout: README.md, submission.json, the code (``train_gpt.py`` or the file submission.json's ``code_file``
  names), at least one log (``*.log``/``*.txt`` or anything under ``logs/``);
* fields: the ones every merged record carries are required (author, github_id, name, date, val_bpb and a size:
  ``bytes_total`` or per-seed ``artifact_bytes``); the ones only later records carry (track, blurb, val_loss,
  val_bpb_std, seeds, seed_results, bytes_total, bytes_code, hardware, pytorch_version, compliance) are
  recommended: missing is a warning;
* seeds: each artifact at most 16,000,000 bytes, bytes_total their max, val_bpb/val_loss their mean and
  val_bpb_std/val_loss_std their sample std (ddof 1; the population std is a warning), to the printed digits;
  fewer than 3 seeds is a warning;
* logs: the last ``Total submission size ...: N bytes``, the ``Code size ...: N bytes`` lines and the last
  ``val_bpb`` of each log against its seed's entry (seed from the file name or a ``seed: N`` line); a line not
  found is a warning, a contradiction an error;
* timings: every train/eval time field (``train_wallclock_ms``, ``eval_time_s``, ``train_time_max_s``, ...) at most
  600 s.

Each finding names the file, the field or line, and its severity; the exit status is 1 when any is an error.
"""

from __future__ import annotations

import json
import math
import re
import statistics
import sys
from dataclasses import asdict, dataclass
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pgolf.cli import Parser, run
from pgolf.compress.size import LIMIT_BYTES as ARTIFACT_LIMIT
from pgolf.errors import PgolfError
from pgolf.report.significance import MIN_SEEDS

BUDGET_SECONDS = 600.0
SUBMISSION = "submission.json"
Number = (int, Decimal)

REQUIRED = {"author": str, "github_id": str, "name": str, "date": str, "val_bpb": Number}
RECOMMENDED = {
    "track": str,
    "blurb": str,  # or technique_summary (pgolf's records and some merged ones carry only that)
    "val_loss": Number,
    "seeds": list,
    "seed_results": dict,
    "bytes_total": int,
    "bytes_code": int,
    "hardware": str,
    "pytorch_version": str,
    "compliance": dict,
}
ALTERNATIVES = {"blurb": "technique_summary"}
SEED_REQUIRED = {"val_bpb": Number, "artifact_bytes": int}
SEED_RECOMMENDED = {"val_loss": Number, "steps": int}
STATS = (("val_bpb", "val_bpb_std"), ("val_loss", "val_loss_std"))

SIZE_LINE = re.compile(r"^Total submission size[^:]*:\s*(\d+) bytes")
CODE_LINE = re.compile(r"^Code size[^:]*:\s*(\d+) bytes")
BPB = re.compile(r"val_bpb[:=]\s*(\d+\.\d+)")
LOSS = re.compile(r"val_loss[:=]\s*(\d+\.\d+)")
SEED_LINE = re.compile(r"^\s*seed[:=]\s*(\d+)\s*$")
SEED_NAME = re.compile(r"seed_?(\d+)")
TRAIN_STOP = re.compile(r"^stopping_early:.*train_time:\s*(\d+)ms")
EVAL_TOTAL = re.compile(r"^total_eval_time:\s*(\d+(?:\.\d+)?)s")
TIME_UNIT = re.compile(r"_(ms|s|seconds)(?:_(?:mean|max))?$")


@dataclass(frozen=True)
class Finding:
    severity: Literal["error", "warning"]
    file: str
    field: str  # a dotted JSON field, or ``line N`` of a log
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.file}: {self.field}: {self.message}"


def _over_limit(n: int) -> str:
    return f"{n:,} bytes is over the {ARTIFACT_LIMIT:,}-byte limit"


def _error(file: str, field: str, message: str) -> Finding:
    return Finding("error", file, field, message)


def _warning(file: str, field: str, message: str) -> Finding:
    return Finding("warning", file, field, message)


def half_unit(value: int | Decimal | str) -> float:
    """Half the last printed digit of a number: the rounding a reported value may carry (0.00090 -> 5e-6)."""
    if isinstance(value, int):
        return 0.5
    exponent = Decimal(value).as_tuple().exponent
    return 0.5 * 10.0 ** int(exponent)  # type: ignore[arg-type]


def _is_type(value: object, kind: type | tuple[type, ...]) -> bool:
    return not isinstance(value, bool) and isinstance(value, kind)


def _type_name(kind: type | tuple[type, ...]) -> str:
    return "number" if kind is Number else kind.__name__  # type: ignore[union-attr]


def check_fields(sub: dict) -> list[Finding]:
    """Required fields (error when missing or mistyped) and recommended ones (warning when missing)."""
    found = []
    for table, missing_is_error in ((REQUIRED, True), (RECOMMENDED, False)):
        for key, kind in table.items():
            value = sub.get(key, sub.get(ALTERNATIVES.get(key, "")))
            if value is None:
                label = key + (f" (or {ALTERNATIVES[key]})" if key in ALTERNATIVES else "")
                make = _error if missing_is_error else _warning
                found.append(make(SUBMISSION, label, "missing" + ("" if missing_is_error else " (recommended)")))
            elif not _is_type(value, str if key in ALTERNATIVES else kind):
                found.append(_error(SUBMISSION, key, f"{value!r} is not a {_type_name(kind)}"))
    if "bytes_total" not in sub and not _seed_results(sub):
        found.append(_error(SUBMISSION, "bytes_total", "missing, and no seed_results[*].artifact_bytes either"))
    return found


def _seed_results(sub: dict) -> dict[str, dict]:
    results = sub.get("seed_results")
    return {str(k): v for k, v in results.items() if isinstance(v, dict)} if isinstance(results, dict) else {}


def check_seeds(sub: dict) -> list[Finding]:
    """Each seed's fields and artifact limit, the seeds list against seed_results, bytes_total as their max."""
    results, found = _seed_results(sub), []
    for seed, row in results.items():
        for key, kind in SEED_REQUIRED.items():
            if not _is_type(value := row.get(key), kind):
                found.append(_error(SUBMISSION, f"seed_results.{seed}.{key}", f"{value!r}: not a {_type_name(kind)}"))
        if _is_type(size := row.get("artifact_bytes"), int) and size > ARTIFACT_LIMIT:
            found.append(_error(SUBMISSION, f"seed_results.{seed}.artifact_bytes", _over_limit(size)))
    for key in SEED_RECOMMENDED:
        lacking = [s for s, row in results.items() if key not in row]
        if lacking:
            found.append(_warning(SUBMISSION, f"seed_results.*.{key}", f"missing for seeds {', '.join(lacking)}"))
    seeds = sub.get("seeds")
    if isinstance(seeds, list) and results and sorted(map(str, seeds)) != sorted(results):
        found.append(_error(SUBMISSION, "seeds", f"{seeds} differ from seed_results' keys {list(results)}"))
    count = len(results) or (len(seeds) if isinstance(seeds, list) else 1)
    if count < MIN_SEEDS:
        found.append(_warning(SUBMISSION, "seeds", f"{count} seed(s); records show at least {MIN_SEEDS}"))
    sizes = [row["artifact_bytes"] for row in results.values() if _is_type(row.get("artifact_bytes"), int)]
    total = sub.get("bytes_total")
    if _is_type(total, int):
        if total > ARTIFACT_LIMIT:
            found.append(_error(SUBMISSION, "bytes_total", _over_limit(total)))
        if sizes and total != max(sizes):
            why = " (the seeds' mean)" if total == round(statistics.fmean(sizes)) else ""
            found.append(_error(SUBMISSION, "bytes_total",
                                f"{total:,}{why} is not the largest seed artifact, {max(sizes):,} bytes"))  # fmt: skip
    return found


def check_stats(sub: dict) -> list[Finding]:
    """The reported mean and sample std of val_bpb (and val_loss) against the seeds', to the printed digits plus
    the seeds' own rounding."""
    results, found = _seed_results(sub), []
    for key, std_key in STATS:
        raw = [row[key] for row in results.values() if _is_type(row.get(key), Number)]
        if not raw or len(raw) != len(results):
            continue
        values, seed_half = [float(v) for v in raw], max(half_unit(v) for v in raw)
        mean = sub.get(key)
        if _is_type(mean, Number) and abs(float(mean) - statistics.fmean(values)) > half_unit(mean) + seed_half:
            found.append(_error(SUBMISSION, key, f"{mean} is not the seeds' mean {statistics.fmean(values):.8f}"))
        if len(values) < 2:
            continue
        std = sub.get(std_key)
        if std is None:
            if key == "val_bpb":
                found.append(_warning(SUBMISSION, std_key, f"missing (recommended with {len(values)} seeds)"))
            continue
        found += _std_finding(std_key, std, values, seed_half)
    return found


def _std_finding(std_key: str, std: object, values: list[float], seed_half: float) -> list[Finding]:
    """The reported std against the seeds' sample std (ddof 1); the population std (ddof 0), which some records
    report (#1855 among them), is a warning, anything else an error."""
    sample, population = statistics.stdev(values), statistics.pstdev(values)
    if not _is_type(std, Number):
        return [_error(SUBMISSION, std_key, f"{std!r} is not a number")]
    slack = half_unit(std) + math.sqrt(len(values) / (len(values) - 1)) * seed_half
    if abs(float(std) - sample) <= slack:
        return []
    if abs(float(std) - population) <= slack:
        return [_warning(SUBMISSION, std_key, f"{std} is the population std (ddof 0); the sample std (ddof 1), "
                                              f"which a significance test uses, is {sample:.6f}")]  # fmt: skip
    return [_error(SUBMISSION, std_key, f"{std} is not the seeds' sample std (ddof 1) {sample:.6f} nor their "
                                        f"population std (ddof 0) {population:.6f}")]  # fmt: skip


def _time_fields(node: object, path: tuple[str, ...] = ()) -> list[tuple[str, float]]:
    """(dotted path, seconds) of every train/eval time in the JSON; the unit comes from the nearest ``_ms``/``_s``/
    ``_seconds`` name on the path; budgets, limits and reserves are not times."""
    if isinstance(node, dict):
        return [t for k, v in node.items() for t in _time_fields(v, (*path, str(k)))]
    dotted = ".".join(path).lower()
    if not _is_type(node, Number) or not re.search(r"train|eval", dotted) or re.search(r"budget|limit|reserve", dotted):
        return []
    units = [m.group(1) for part in reversed(path) if (m := TIME_UNIT.search(part.lower()))]
    if not units or not ("time" in dotted or "wallclock" in dotted or units[0] == "seconds"):
        return []
    return [(".".join(path), float(node) / (1000.0 if units[0] == "ms" else 1.0))]


def check_timings(sub: dict) -> list[Finding]:
    """Every train/eval wall-clock field of submission.json within the 600 s budget."""
    return [
        _error(SUBMISSION, path, f"{seconds:.1f} s is over the {BUDGET_SECONDS:.0f} s budget")
        for path, seconds in _time_fields(sub)
        if seconds > BUDGET_SECONDS
    ]


@dataclass
class LogFacts:
    """What a log says, each with its line number."""

    seed: str | None = None
    size: tuple[int, int] | None = None  # (line, bytes) of the last "Total submission size"
    code: list[tuple[int, int]] | None = None  # every "Code size" line
    bpb: tuple[int, str, str | None] | None = None  # (line, val_bpb, val_loss) of the last val_bpb
    train_ms: tuple[int, int] | None = None
    eval_s: tuple[int, str] | None = None


def read_log(path: Path) -> LogFacts:
    facts = LogFacts(code=[])
    name_seed = SEED_NAME.search(path.name)
    facts.seed = name_seed.group(1) if name_seed else None
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if facts.seed is None and (m := SEED_LINE.match(line)):
            facts.seed = m.group(1)
        if m := SIZE_LINE.match(line):
            facts.size = (n, int(m.group(1)))
        if m := CODE_LINE.match(line):
            facts.code.append((n, int(m.group(1))))
        if bpbs := BPB.findall(line):
            losses = LOSS.findall(line)
            facts.bpb = (n, bpbs[-1], losses[-1] if losses else None)
        if m := TRAIN_STOP.match(line):
            facts.train_ms = (n, int(m.group(1)))
        if m := EVAL_TOTAL.match(line):
            facts.eval_s = (n, m.group(1))
    return facts


def _log_target(sub: dict, facts: LogFacts, name: str, n_logs: int) -> tuple[dict | None, str, list[Finding]]:
    """The JSON entry a log reports on: its seed's seed_results row, or the top level of a one-log record."""
    results = _seed_results(sub)
    if results:
        if facts.seed in results:
            return results[facts.seed], f"seed_results.{facts.seed}", []
        if len(results) == 1 and facts.seed is None:
            seed = next(iter(results))
            return results[seed], f"seed_results.{seed}", []
        return None, "", [_warning(name, "seed", f"seed {facts.seed} is not in seed_results; not compared")]
    if n_logs == 1:
        return {**sub, "artifact_bytes": sub.get("bytes_total")}, "", []
    return None, "", [_warning(name, "seed_results", "missing, so this log (one of several) is not compared")]


def _compare_log(sub: dict, facts: LogFacts, name: str, target: dict, where: str) -> list[Finding]:
    found, prefix = [], f"{where}." if where else ""
    size_key = f"{prefix}artifact_bytes" if where else "bytes_total"
    if target.get("artifact_bytes") is not None:
        if facts.size is None:
            found.append(_warning(name, size_key, "no 'Total submission size ...: N bytes' line found in log"))
        elif facts.size[1] != target["artifact_bytes"]:
            found.append(_error(name, f"line {facts.size[0]}", f"total submission size {facts.size[1]:,} bytes "
                                f"contradicts {SUBMISSION} {size_key} = {target['artifact_bytes']:,}"))  # fmt: skip
    if _is_type(sub.get("bytes_code"), int):
        if not facts.code:
            found.append(_warning(name, "bytes_code", "no 'Code size ...: N bytes' line found in log"))
        elif sub["bytes_code"] not in [b for _, b in facts.code]:
            lines = ", ".join(f"line {n}: {b:,}" for n, b in facts.code)
            found.append(_error(name, "bytes_code", f"{SUBMISSION} bytes_code = {sub['bytes_code']:,} is none of the "
                                f"log's code sizes ({lines})"))  # fmt: skip
    for key, index in (("val_bpb", 1), ("val_loss", 2)):
        want = target.get(key)
        if not _is_type(want, Number):
            continue
        if facts.bpb is None:
            if key == "val_bpb":
                found.append(_warning(name, f"{prefix}val_bpb", "no val_bpb line found in log"))
            continue
        got = facts.bpb[index]
        if got is not None and abs(float(got) - float(want)) > half_unit(got) + half_unit(want):
            found.append(_error(name, f"line {facts.bpb[0]}", f"final {key} {got} contradicts {SUBMISSION} "
                                f"{prefix}{key} = {want}"))  # fmt: skip
    return found


def _log_times(facts: LogFacts, name: str) -> list[Finding]:
    """The log's own clocks over 600 s: a warning (the record loops check the cap after a step, so a few ms over
    is how the merged baseline itself stopped)."""
    found = []
    if facts.train_ms and facts.train_ms[1] > BUDGET_SECONDS * 1000:
        seconds = facts.train_ms[1] / 1000
        found.append(_warning(name, f"line {facts.train_ms[0]}", f"train_time {seconds:.3f} s is over 600 s"))
    if facts.eval_s and float(facts.eval_s[1]) > BUDGET_SECONDS:
        found.append(_warning(name, f"line {facts.eval_s[0]}", f"total_eval_time {facts.eval_s[1]} s is over 600 s"))
    return found


def check_logs(folder: Path, logs: list[Path], sub: dict) -> list[Finding]:
    """Each text log's size, code size and final val_bpb lines against its entry in submission.json."""
    text_logs = [p for p in logs if p.suffix in (".log", ".txt")]
    if not text_logs:
        return [_warning("logs", "-", "no text log (*.log, *.txt) to check submission.json against")]
    found, seen = [], set()
    for path in text_logs:
        name, facts = str(path.relative_to(folder)), read_log(path)
        target, where, problems = _log_target(sub, facts, name, len(text_logs))
        found += problems + _log_times(facts, name)
        if target is not None:
            seen.add(where)
            found += _compare_log(sub, facts, name, target, where)
    unlogged = [s for s in _seed_results(sub) if f"seed_results.{s}" not in seen]
    if unlogged:
        found.append(_warning(SUBMISSION, "seed_results", f"no log found for seeds {', '.join(unlogged)}"))
    return found


def find_logs(folder: Path) -> list[Path]:
    top = [p for p in folder.iterdir() if p.is_file() and p.suffix in (".log", ".txt") and p.name != "requirements.txt"]
    nested = [p for p in (folder / "logs").rglob("*") if p.is_file()] if (folder / "logs").is_dir() else []
    return sorted(top) + sorted(nested)


def check_layout(folder: Path, sub: dict) -> tuple[list[Finding], list[Path]]:
    """README.md, the code file, at least one log; returns the findings and the logs."""
    found = [] if (folder / "README.md").is_file() else [_error("README.md", "-", "missing")]
    named = sub.get("code_file")
    if isinstance(named, str):
        if not (folder / named).is_file():
            found.append(_error(named, "-", f"missing (named by {SUBMISSION} code_file)"))
    elif not (folder / "train_gpt.py").is_file():
        scripts = sorted(p.name for p in folder.glob("*.py"))
        if len(scripts) == 1:
            found.append(_warning(scripts[0], "-", f"taken as the code: no train_gpt.py, and {SUBMISSION} names no "
                                  f'code_file (add "code_file": "{scripts[0]}")'))  # fmt: skip
        else:
            found.append(_error("train_gpt.py", "-", f"missing, and {SUBMISSION} names no code_file"))
    logs = find_logs(folder)
    if not logs:
        found.append(_error("logs", "-", "no log file (*.log, *.txt or logs/)"))
    return found, logs


def load_submission(folder: Path) -> tuple[dict | None, list[Finding]]:
    """submission.json with every decimal kept as written (its printed digits are its precision)."""
    path = folder / SUBMISSION
    if not path.is_file():
        return None, [_error(SUBMISSION, "-", "missing")]
    try:
        sub = json.loads(path.read_text(), parse_float=Decimal)
    except json.JSONDecodeError as err:
        return None, [_error(SUBMISSION, f"line {err.lineno}", f"not JSON: {err.msg}")]
    if not isinstance(sub, dict):
        return None, [_error(SUBMISSION, "-", "not a JSON object")]
    return sub, []


def check_folder(folder: Path) -> list[Finding]:
    """Every check on one records folder."""
    if not folder.is_dir():
        raise PgolfError(f"{folder} is not a folder; give a records folder (e.g. records/track_10min_16mb/<name>)")
    sub, found = load_submission(folder)
    if sub is None:
        layout, _ = check_layout(folder, {})
        return layout + found
    layout, logs = check_layout(folder, sub)
    found = layout + check_fields(sub) + check_seeds(sub) + check_stats(sub) + check_timings(sub)
    return found + (check_logs(folder, logs, sub) if logs else [])


def summary_line(findings: list[Finding]) -> str:
    errors = sum(f.severity == "error" for f in findings)
    return f"{errors} errors, {len(findings) - errors} warnings"


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="the records folder, e.g. records/track_10min_16mb/<date>_<name>")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    args = parser.parse_args(argv)
    findings = check_folder(args.folder)
    errors = sum(f.severity == "error" for f in findings)
    if args.json:
        report = {"folder": str(args.folder), "errors": errors, "warnings": len(findings) - errors,
                  "findings": [asdict(f) for f in findings]}  # fmt: skip
        print(json.dumps(report, indent=2))
    else:
        for f in findings:
            print(f)
        print(f"{args.folder}: {summary_line(findings)}")
    if errors:
        sys.exit(1)


if __name__ == "__main__":
    run(main)
