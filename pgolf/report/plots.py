"""Render the DVC plots of dvc.yaml to PNG files, offline.

``dvc plots show`` / ``dvc plots diff`` write HTML that loads Vega from a CDN, so offline it is blank. Here
``dvc plots show --json`` (or ``dvc plots diff <revs> --json``) gives each plot as a filled Vega-Lite spec, and
``vl-convert-python`` (Vega's own renderer in embedded Deno, no browser, no network) turns it into a PNG.

By default the curated top-level ``plots:`` of dvc.yaml are rendered (train loss and lr, per-tensor quantization
error, bytes per stream vs entropy bound, bpb by TTT segment); ``--all`` adds the stage-declared plot files,
``--plot ID`` picks some.

References:
    DVC plots: https://dvc.org/doc/user-guide/experiment-management/visualizing-plots (top-level ``plots:``,
    templates, ``--json``); vl-convert: https://github.com/vega/vl-convert.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import yaml

from pgolf.cli import Parser, run
from pgolf.errors import PgolfError
from pgolf.report import optional_import


def dvc_plot_specs(repo: Path, revs: list[str] | None = None) -> dict[str, dict]:
    """{plot id: Vega-Lite spec} from ``dvc plots show|diff --json`` run in ``repo``."""
    optional_import("dvc", "dvc>=3.60", "pipeline")  # run below as python -m dvc
    cmd = [sys.executable, "-m", "dvc", "plots", *(["diff", *revs] if revs else ["show"]), "--json"]
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise PgolfError(f"{' '.join(cmd[2:])} failed in {repo}: {proc.stderr.strip() or proc.stdout.strip()}")
    try:
        out = json.loads(proc.stdout)
    except json.JSONDecodeError as err:
        raise PgolfError(f"dvc plots printed no JSON: {proc.stdout[:200]!r} {proc.stderr[:200]!r}") from err
    if "data" not in out:
        raise PgolfError(f"dvc plots: {_errors(out) or 'no plots found'}")
    specs = {}
    for plot_id, renders in out["data"].items():
        for r in renders:
            if r.get("type") == "vega" and "content" in r:
                specs[plot_id] = r["content"]
    if out.get("errors"):
        print(f"warning: dvc plots: {_errors(out)}", file=sys.stderr)
    return specs


def _errors(out: dict) -> str:
    return "; ".join(f"{e.get('rev', '?')}: {e.get('msg', e.get('type'))}" for e in out.get("errors", []))


def top_level_ids(repo: Path) -> list[str]:
    """The ids of dvc.yaml's top-level ``plots:`` (each entry is ``{id: properties}`` or a bare path)."""
    entries = yaml.safe_load((repo / "dvc.yaml").read_text()).get("plots") or []
    return [next(iter(e)) if isinstance(e, dict) else str(e) for e in entries]


def to_png(spec: dict, scale: float = 2.0) -> bytes:
    """A Vega-Lite spec as PNG bytes."""
    vl_convert = optional_import("vl_convert", "vl-convert-python>=1.6", "report")
    return vl_convert.vegalite_to_png(spec, scale=scale)


def file_name(plot_id: str) -> str:
    """``metrics/eval_phases.csv`` -> ``metrics_eval_phases.png``; ``train_loss`` -> ``train_loss.png``."""
    stem = re.sub(r"\.(csv|tsv|json|yaml|yml)$", "", plot_id)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") + ".png"


def render(repo: Path, out: Path, revs: list[str] | None, ids: list[str] | None, all_plots: bool) -> list[Path]:
    """Write one PNG per selected plot into ``out``; returns the paths."""
    specs = dvc_plot_specs(repo, revs)
    if ids:
        missing = [i for i in ids if i not in specs]
        if missing:
            raise PgolfError(f"no plot {missing} (or its data files are missing); known: {sorted(specs)}")
        chosen = ids
    elif all_plots:
        chosen = list(specs)
    else:
        wanted = top_level_ids(repo)
        chosen = [i for i in wanted if i in specs] or list(specs)
        skipped = [i for i in wanted if i not in specs]
        if skipped:
            print(f"warning: no data for {skipped} (run the stages that write them)", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for plot_id in chosen:
        path = out / file_name(plot_id)
        path.write_bytes(to_png(specs[plot_id]))
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="plots", help="folder for the PNG files (default: %(default)s)")
    parser.add_argument("--repo", default=".", help="the DVC repository (default: %(default)s)")
    parser.add_argument("--revs", nargs="+", help="compare these revisions/experiments (dvc plots diff)")
    parser.add_argument("--plot", nargs="+", dest="ids", help="plot ids to render (default: top-level plots)")
    parser.add_argument("--all", action="store_true", dest="all_plots", help="also the stage-declared plot files")
    args = parser.parse_args(argv)
    written = render(Path(args.repo), Path(args.out), args.revs, args.ids, args.all_plots)
    print(f"plots: wrote {len(written)} PNG files to {args.out}: " + ", ".join(p.name for p in written))


if __name__ == "__main__":
    run(main)
