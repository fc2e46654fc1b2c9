"""A compact experiment table: the score ladder, the bytes and the params that differ, one row per experiment.

``dvc exp show`` prints every metric of every stage and every param: hundreds of columns. This command runs
``dvc exp show --json`` (other arguments go to it: ``-A``, ``--rev REV``, ``-n 3``, ...), or reads saved output
with ``--json FILE``, and prints one row per workspace, baseline commit and experiment (its name, or short rev):

* the metrics of ``metrics/headline.json`` (the pipeline's one DVC metrics file): the ladder rungs present in some
  row (raw, ema or swa, deq, bin, slide, ttt, csgd, mphase; val_bpb to 4 decimals), ``bytes.total`` (bytes),
  ``bytes.fits`` (fits) and ``compliance.compliant`` (ok), then, when some row has them, the run's device-hours
  (dev-h: GPU-hours on GPUs, 3 decimals) and its cost at ``compliance.device_hour_price`` (cost, 2 decimals);
  ``-`` where a row has no such value;
* the params of ``params.yaml`` whose values differ between the rows shown, headed by their dotted key (shortened
  from the left, ``…lqer.rank``). When they do not fit the width, they go as ``key=value`` pairs on a line under
  each row. Numbers are never cut.

A queued, running or failed experiment shows its state. A failed one's metrics are blanked: its commit holds the
metrics files the workspace had when it was queued, not results of its own. Its log is named below the table.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import Parser, run
from pgolf.dist import subprocess_env
from pgolf.errors import PgolfError

SUMMARY = "metrics/headline.json"
PARAMS = "params.yaml"
RUNGS = {  # ladder key -> header, in pipeline order
    "prequant_raw": "raw",
    "prequant_ema": "ema",
    "prequant_swa": "swa",
    "dequantized": "deq",
    "model_bin": "bin",
    "sliding": "slide",
    "lora_ttt": "ttt",
    "chunk_sgd": "csgd",
    "multi_phase": "mphase",
}
TOTALS = {"bytes.total": "bytes", "bytes.fits": "fits", "compliance.compliant": "ok"}
DEVICE_TIME = {"device_time.device_hours": ("dev-h", 3), "device_time.cost": ("cost", 2)}
"""Shown when some row has them: headline key -> (header, decimals)."""
PARAM_HEADER = 12  # param headers longer than this (and than their values) lose dotted parts from the left
GAP = "  "
NO_FORMAT_FLAGS = ("--csv", "--md")  # dvc exp show options that replace the JSON this command reads


@dataclass(frozen=True)
class Row:
    """One line of the table: a workspace, a baseline commit or an experiment."""

    label: str  # tree prefix + name or short rev
    state: str  # "" (done), queued, running, failed or error
    metrics: dict | None  # flat headline.json, None without one
    params: dict | None  # flat params.yaml, None without one
    note: str  # shown under the table ("" for none)


# ---------------------------------------------------------------------------------------------------------------
# Parsing `dvc exp show --json`


def parse(rows_json: list) -> list[Row]:
    """The rows of ``dvc exp show --json`` output, in its order (each baseline followed by its experiments)."""
    if not isinstance(rows_json, list) or not all(isinstance(r, dict) and "rev" in r for r in rows_json):
        raise PgolfError("not `dvc exp show --json` output: expected a list of objects with a 'rev'")
    rows = []
    for base in rows_json:
        rows.append(_row(base, base.get("name") or _short_rev(base["rev"]), None, ""))
        ranges = [e for e in base.get("experiments") or [] if e.get("revs")]
        for i, exp_range in enumerate(ranges):
            exp = exp_range["revs"][0]  # later revs are legacy checkpoints; the first is the tip
            tree = "└─ " if i == len(ranges) - 1 else "├─ "
            rows.append(_row(exp, exp.get("name") or _short_rev(exp["rev"]), exp_range.get("executor"), tree))
    return rows


def _row(entry: dict, name: str, executor: dict | None, tree: str) -> Row:
    data = entry.get("data") or {}
    state, note = _state(entry, name, executor or {})
    metrics, metrics_error = _file_data(data.get("metrics"), SUMMARY)
    if metrics_error and not note and metrics_error.get("type") != "FileNotFoundError":
        note = f"{name}: {SUMMARY}: {metrics_error.get('msg', metrics_error)}"
    params, _ = _file_data(data.get("params"), PARAMS)
    return Row(tree + name, state, None if state == "failed" else metrics, params, note)


def _state(entry: dict, name: str, executor: dict) -> tuple[str, str]:
    """(state cell, note) of a row: queued/running/failed from the queue's executor, "error" for a read error."""
    state = executor.get("state") or ""
    state = "" if state == "success" else state
    local = executor.get("local") or {}
    if state == "failed":
        code, log = local.get("returncode"), local.get("log")
        exit_code = f" (exit {code})" if code is not None else ""
        why = _last_error(log)
        return state, f"{name}: failed{exit_code}" + (f": {why}" if why else f", log {log}" if log else "")
    error = (entry.get("error") or {}).get("msg", "")
    return (state or "error", f"{name}: {error}") if error else (state, "")


def _last_error(log: str | None) -> str:
    """The last ``error:`` line of a failed experiment's queue log (a stage's one-line error, e.g. the one of
    ``train.abort_above``), or "" when there is none or the log is gone."""
    try:
        lines = Path(log).read_text(errors="replace").splitlines() if log else []
    except OSError:
        return ""
    return next((line.strip() for line in reversed(lines) if line.startswith("error:")), "")


def _file_data(files: dict | None, name: str) -> tuple[dict | None, dict | None]:
    """(flat contents or None, the read error or None) of one metrics/params file in a row's data."""
    entry = (files or {}).get(name) or {}
    content = entry.get("data")
    return (_flatten(content) if isinstance(content, dict) else None), entry.get("error")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _short_rev(rev: str) -> str:
    return rev[:7] if len(rev) == 40 and all(c in "0123456789abcdef" for c in rev) else rev


# ---------------------------------------------------------------------------------------------------------------
# Cells


def _bpb(v: object) -> str:
    return _number(v, 4)


def _bytes(v: object) -> str:
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return f"{v:,}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _number(v: object, decimals: int) -> str:
    return f"{v:.{decimals}f}" if isinstance(v, int | float) and not isinstance(v, bool) else "-"


def _yes_no(v: object) -> str:
    return ("yes" if v else "no") if isinstance(v, bool) else "-"


def _param(v: object) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)  # true / false / null, as params.yaml spells them
    if isinstance(v, list | dict):
        return json.dumps(v, separators=(",", ":"))
    return '""' if v == "" else str(v)


def metric_columns(rows: list[Row]) -> list[tuple[str, list[str]]]:
    """(header, cells) of the ladder rungs present in some row, then bytes, fits and ok, then the device-hours and
    the cost present in some row."""
    present = {k for r in rows if r.metrics for k in r.metrics}
    cols = [(h, [_bpb((r.metrics or {}).get(f"ladder.{k}")) for r in rows]) for k, h in RUNGS.items()
            if f"ladder.{k}" in present]  # fmt: skip
    fmt = {"bytes.total": _bytes, "bytes.fits": _yes_no, "compliance.compliant": _yes_no}
    cols += [(h, [fmt[k]((r.metrics or {}).get(k)) for r in rows]) for k, h in TOTALS.items()]
    return cols + [(h, [_number((r.metrics or {}).get(k), digits) for r in rows])
                   for k, (h, digits) in DEVICE_TIME.items() if k in present]  # fmt: skip


def differing_params(rows: list[Row]) -> dict[str, list[str]]:
    """Dotted key -> cell per row, for the params.yaml keys whose values are not the same in every row."""
    with_params = [r.params for r in rows if r.params is not None]
    keys = list(dict.fromkeys(k for p in with_params for k in p))
    missing = object()
    out = {}
    for key in keys:
        values = {_param(p.get(key)) if key in p else missing for p in with_params}
        if len(values) > 1:
            out[key] = [_param(r.params[key]) if r.params and key in r.params else "-" for r in rows]
    return out


def short_key(key: str, limit: int) -> str:
    """``key`` without dotted parts on the left, behind "…", until it fits ``limit`` (the last part always stays)."""
    if len(key) <= limit:
        return key
    parts = key.split(".")
    keep = 1
    while keep < len(parts) - 1 and len(".".join(parts[-keep - 1 :])) + 1 <= limit:
        keep += 1
    return "…" + ".".join(parts[-keep:])


def _param_headers(params: dict[str, list[str]]) -> list[str]:
    heads = [short_key(k, max(PARAM_HEADER, *map(len, cells))) for k, cells in params.items()]
    clash = {h for h in heads if heads.count(h) > 1}
    return [k if h in clash else h for k, h in zip(params, heads, strict=True)]


# ---------------------------------------------------------------------------------------------------------------
# Layout


def table(rows_json: list, width: int = 120) -> str:
    """The table of ``dvc exp show --json`` output, every line at most ``width`` characters."""
    rows = parse(rows_json)
    if not rows:
        raise PgolfError("`dvc exp show --json` returned no rows")
    head = [("experiment", [r.label for r in rows])]
    if any(r.state for r in rows):
        head.append(("state", [r.state or "" for r in rows]))
    base = head + metric_columns(rows)
    params = differing_params(rows)
    inline = list(zip(_param_headers(params), params.values(), strict=True))
    for gap in (GAP, " "):
        if _line_width(base + inline, gap) <= width:
            lines = _render(base + inline, gap)
            break
    else:
        gap = GAP if _line_width(base, GAP) <= width else " "
        lines = _render(_fit_labels(base, gap, width), gap)
        lines = [lines[0]] + [ln for i, row in enumerate(lines[1:]) for ln in [row, *_pairs(params, i, width)]]
    if all(r.metrics is None for r in rows):
        lines.append(f"(no row has {SUMMARY}: `dvc repro summary` writes it)")
    for note in (r.note for r in rows if r.note):
        lines += textwrap.wrap(note, width, subsequent_indent="  ", break_on_hyphens=False)
    return "\n".join(lines)


def _line_width(cols: list[tuple[str, list[str]]], gap: str) -> int:
    return sum(max(len(h), *map(len, cells)) for h, cells in cols) + len(gap) * (len(cols) - 1)


def _render(cols: list[tuple[str, list[str]]], gap: str) -> list[str]:
    """Header and rows; the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *map(len, cells)) for h, cells in cols]
    just = [str.ljust] + [str.rjust] * (len(cols) - 1)
    table_rows = [[h for h, _ in cols]] + [list(cells) for cells in zip(*(c for _, c in cols), strict=True)]
    return [gap.join(j(cell, w) for j, cell, w in zip(just, line, widths, strict=True)).rstrip() for line in table_rows]


def _fit_labels(cols: list[tuple[str, list[str]]], gap: str, width: int) -> list[tuple[str, list[str]]]:
    """Names longer than the room the metric columns leave end in "…" (names only: numbers are never cut)."""
    room = max(width - _line_width(cols[1:], gap) - len(gap), len("experiment"))
    (header, labels), rest = cols[0], cols[1:]
    return [(header, [lb if len(lb) <= room else lb[: room - 1] + "…" for lb in labels]), *rest]


def _pairs(params: dict[str, list[str]], i: int, width: int) -> list[str]:
    """Row ``i``'s differing params as ``key=value`` pairs on lines of at most ``width`` under its row."""
    if not params:
        return []
    text = GAP.join(f"{k}={cells[i]}" for k, cells in params.items())
    return textwrap.wrap(text, width, initial_indent="    ", subsequent_indent="    ", break_on_hyphens=False)


# ---------------------------------------------------------------------------------------------------------------
# Running dvc


def _dvc_command() -> list[str]:
    if importlib.util.find_spec("dvc") is not None:
        return [sys.executable, "-m", "dvc"]
    if shutil.which("dvc"):
        return ["dvc"]
    raise PgolfError('this command needs dvc (neither importable nor on PATH): pip install "dvc>=3.60" '
                     "(in the extra pgolf[pipeline])")  # fmt: skip


def exp_show(repo: str | Path, dvc_args: list[str]) -> list:
    """The parsed output of ``dvc exp show --json *dvc_args`` run in ``repo``."""
    if not Path(repo).is_dir():
        raise PgolfError(f"--repo {repo}: no such directory")
    bad = [a for a in dvc_args if a in NO_FORMAT_FLAGS]
    if bad:
        raise PgolfError(f"{' '.join(bad)}: this command reads dvc's JSON; drop the other output format")
    cmd = [*_dvc_command(), "exp", "show", "--json", *dvc_args]
    env = subprocess_env(DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, env=env, check=False)
    shown = " ".join(["dvc", *cmd[len(cmd) - len(dvc_args) - 3 :]])
    if proc.returncode != 0:
        err = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "(no message)"
        if "not inside of a DVC repository" in proc.stderr:
            raise PgolfError(f"{Path(repo).resolve()} is not a DVC repository ({err}); run this in the pipeline's "
                             "checkout or pass --repo")  # fmt: skip
        raise PgolfError(f"`{shown}` failed in {Path(repo).resolve()} (exit {proc.returncode}): {err}")
    return _loads(proc.stdout, f"`{shown}`")


def _loads(text: str, source: str) -> list:
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise PgolfError(f"{source} is not JSON ({err}); expected `dvc exp show --json` output") from err


# ---------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> None:
    parser = Parser(
        prog="python -m pgolf.report.exps",
        description=__doc__.split("\n\n")[0],
        epilog="Other arguments go to `dvc exp show`, e.g. -A, --rev REV, -n 3, --hide-queued.",
        allow_abbrev=False,  # so that no dvc option is taken for an abbreviation of ours
    )
    parser.add_argument("--json", metavar="FILE", type=Path, help="saved `dvc exp show --json` output to read")
    parser.add_argument("--repo", default=".", help="the DVC repository to run dvc in (default: %(default)s)")
    parser.add_argument("--width", type=int, default=120, help="the longest line (default: %(default)s)")
    args, dvc_args = parser.parse_known_args(argv)
    if args.width < 40:
        raise PgolfError(f"--width {args.width}: at least 40 columns are needed")
    if args.json is not None:
        if dvc_args:
            raise PgolfError(f"{' '.join(dvc_args)}: dvc arguments do nothing with --json FILE")
        rows_json = _loads(args.json.read_text(), str(args.json))
    else:
        rows_json = exp_show(args.repo, dvc_args)
    print(table(rows_json, args.width))


if __name__ == "__main__":
    run(main)
