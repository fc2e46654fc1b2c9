"""Write a challenge-style records folder for a finished run: README.md, submission.json, logs, code and model.

The layout follows openai/parameter-golf ``records/track_10min_16mb/<date>_<name>/``: a README explaining the run,
``submission.json`` (the fields of the merged records, e.g. 2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT:
author, github_id, name, date, track, val_bpb, val_bpb_std, seeds, seed_results, hardware, pytorch_version,
technique_summary, compliance; plus val_loss and the bytes_* fields other records carry), the logs, and the code.
Here the code is the self-extracting bundle ``pgolf_code.py`` and the artifact is ``model.bin``, both copied from
``artifacts/submission/``; the logs are the run's ``metrics/`` files and its ``params.yaml``.

The run is the workspace by default, or any git revision / DVC experiment (``--exp``), read through
``dvc.api.DVCFileSystem`` (metrics from git, ``artifacts/submission`` from the local DVC cache).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import shutil
from pathlib import Path

import yaml

from pgolf.cli import run
from pgolf.errors import PgolfError
from pgolf.report import optional_import

SUBMISSION_FILES = ("model.bin", "pgolf_code.py")
LOG_PATTERNS = ("metrics/*.json", "metrics/*.csv", "metrics/train/*.json", "metrics/train/plots/**/*.tsv")
KEY_PARAMS = (
    "data.source",
    "data.variant",
    "tokenizer.vocab_size",
    "tokenizer.caseops",
    "model.num_layers",
    "model.model_dim",
    "model.num_heads",
    "model.num_kv_heads",
    "model.mlp_mult",
    "model.num_loops",
    "model.parallel_mode",
    "train.seed",
    "train.max_wallclock_seconds",
    "train.global_batch_tokens",
    "train.seq_len",
    "train.averaging.kind",
    "export.weights",
    "quantize.method",
    "quantize.embedding.bits",
    "quantize.q.bits",
    "quantize.up.bits",
    "quantize.lqer.enabled",
    "compress.codec",
    "eval.max_docs",
    "eval.lora_ttt.rank",
    "eval.lora_ttt.phases",
)
TIME_LIMIT_S = 600.0


class RunSource:
    """Files of one run: the workspace (a folder) or a revision/experiment through DVC's filesystem."""

    def __init__(self, repo: Path, rev: str | None) -> None:
        self.repo, self.rev = repo, rev
        self.fs = None
        if rev is not None:
            dvc_api = optional_import("dvc.api", "dvc>=3.60", "pipeline")
            try:
                self.fs = dvc_api.DVCFileSystem(str(repo), rev=rev)
                self.fs.ls("/", detail=False)  # resolves the revision now
            except Exception as err:  # dvc/scmrepo raise several types for a bad revision
                raise PgolfError(f"--exp {rev!r}: not a git revision or DVC experiment of {repo}: {err}") from err

    def exists(self, rel: str) -> bool:
        if self.fs is None:
            return (self.repo / rel).is_file()
        return self.fs.isfile(rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.exists(rel):
            where = str(self.repo) if self.rev is None else f"revision {self.rev} (or not in the local DVC cache)"
            raise PgolfError(f"{rel} is missing in {where}; run the pipeline through evaluate (dvc repro) first")
        return self.fs.read_bytes(rel) if self.fs is not None else (self.repo / rel).read_bytes()

    def glob(self, pattern: str) -> list[str]:
        if self.fs is not None:
            return sorted(p.lstrip("/") for p in self.fs.glob(pattern) if self.fs.isfile(p))
        return sorted(str(p.relative_to(self.repo)) for p in self.repo.glob(pattern) if p.is_file())

    def json(self, rel: str) -> dict:
        return json.loads(self.read_bytes(rel))


def _get(d: dict, dotted: str):
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def collect(src: RunSource) -> dict:
    """The run's params and metrics (eval, size, export, quantize, compress; train meta when present)."""
    run_info = {
        "params": yaml.safe_load(src.read_bytes("params.yaml")),
        "eval": src.json("metrics/eval.json"),
        "size": src.json("metrics/size.json"),
    }
    for name in ("export", "quantize", "compress"):
        rel = f"metrics/{name}.json"
        run_info[name] = src.json(rel) if src.exists(rel) else {}
    run_info["train"] = src.json("artifacts/train/meta.json") if src.exists("artifacts/train/meta.json") else {}
    return run_info


def primary_mode(eval_metrics: dict) -> str:
    """The reported score: phased LoRA TTT when it ran (the record's), else the best compliant mode."""
    modes = eval_metrics.get("modes", {})
    if not modes:
        raise PgolfError("metrics/eval.json has no modes; the evaluate stage did not finish")
    if "lora_ttt" in modes:
        return "lora_ttt"
    compliant = {m: v for m, v in modes.items() if v.get("compliant", True)} or modes
    return min(compliant, key=lambda m: compliant[m]["val_bpb"])


def submission_json(info: dict, meta: dict) -> dict:
    """The challenge's submission.json fields, with this run's values (one seed: std 0)."""
    mode = primary_mode(info["eval"])
    score, size, seed = info["eval"]["modes"][mode], info["size"], _get(info["params"], "train.seed")
    train_s = info["train"].get("train_seconds")
    eval_s = sum(score.get("seconds", {}).values())
    return {
        "author": meta["author"],
        "github_id": meta["github_id"],
        "name": meta["name"],
        "date": meta["date"],
        "track": meta["track"],
        "val_loss": round(score["val_loss"], 8),
        "val_bpb": round(score["val_bpb"], 8),
        "val_bpb_std": 0.0,
        "seeds": [seed],
        "seed_results": {
            str(seed): {
                "val_loss": round(score["val_loss"], 8),
                "val_bpb": round(score["val_bpb"], 8),
                "artifact_bytes": size["total_bytes"],
            }
        },
        "bytes_total": size["total_bytes"],
        "bytes_model": size["model_bytes"],
        "bytes_code": size["code_bytes"],
        "hardware": meta["hardware"],
        "pytorch_version": _torch_version(),
        "technique_summary": meta["summary"] or f"pgolf (PR #1855 recipe as a DVC pipeline), scored by {mode}",
        "compliance": {
            "train_under_600s": None if train_s is None else train_s <= TIME_LIMIT_S,
            "artifact_under_16mb": bool(size["fits"]),
            "eval_under_600s": eval_s <= TIME_LIMIT_S,
            "score_first_ttt": bool(score.get("compliant", False)),
            "three_seeds": False,
        },
        "eval_mode": mode,
        "eval_documents": info["eval"].get("documents"),
    }


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def readme(info: dict, sub: dict, rev: str | None) -> str:
    """README.md: what ran, the scores per mode, the bytes, the timings and how to reproduce it."""
    lines = [
        f"# {sub['name']}",
        "",
        f"val_bpb **{sub['val_bpb']:.8f}** ({sub['eval_mode']}, "
        f"{sub['eval_documents']} val documents), artifact **{sub['bytes_total']:,} bytes**, "
        f"run {'workspace' if rev is None else rev}, {sub['date']}.",
        "",
    ]
    lines += [
        "## Scores per eval mode",
        "",
        "| mode | val_bpb | val_loss | tokens | bytes | compliant | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, m in info["eval"]["modes"].items():
        secs = ", ".join(f"{k} {v:.1f}" for k, v in m.get("seconds", {}).items())
        lines.append(
            f"| {mode} | {m['val_bpb']:.6f} | {m['val_loss']:.6f} | {m.get('tokens', '')} | "
            f"{m.get('bytes', '')} | {m.get('compliant', '')} | {secs} |"
        )
    for key in ("prequant_ema", "prequant_raw", "unigram_baseline"):
        if key in info["export"]:
            lines.append(
                f"| export: {key} | {info['export'][key]['val_bpb']:.6f} | "
                f"{info['export'][key]['val_loss']:.6f} | | | | |"
            )
    if "quantized" in info["quantize"]:
        q = info["quantize"]["quantized"]
        lines.append(f"| quantize: dequantized | {q['val_bpb']:.6f} | {q['val_loss']:.6f} | | | | |")
    size = info["size"]
    lines += [
        "",
        "## Bytes",
        "",
        "| model.bin | pgolf_code.py | total | limit | margin | fits |",
        "|---|---|---|---|---|---|",
        f"| {size['model_bytes']:,} | {size['code_bytes']:,} | {size['total_bytes']:,} | "
        f"{size.get('limit_bytes', 16_000_000):,} | {size.get('margin_bytes', 0):,} | {size['fits']} |",
    ]
    lines += ["", "## Timings (seconds)", ""] + [f"- {k}: {v}" for k, v in _timings(info).items()]
    lines += ["", "## Key parameters", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k in KEY_PARAMS if (v := _get(info["params"], k)) is not None]
    lines += ["", "The full parameters are in `params.yaml`; the metrics and training curves in `logs/`.", ""]
    lines += ["## Reproduce", "", "```bash"]
    lines += ["dvc repro"] if rev is None else [f"dvc exp apply {rev}  # or: git checkout {rev}", "dvc repro"]
    lines += [
        "dvc metrics show",
        "```",
        "",
        "The code of this folder unpacks itself: `python pgolf_code.py` in an "
        "empty folder writes back `pgolf/` and `stages/`, the sources training and evaluation import.",
        "",
    ]
    return "\n".join(lines)


def _timings(info: dict) -> dict:
    t = {
        "train (wall clock)": info["train"].get("train_seconds"),
        "export eval (ema)": _get(info["export"], "prequant_ema.seconds"),
        "quantize": _get(info["quantize"], "quantize_seconds"),
        "compress": _get(info["compress"], "compress_seconds"),
        "decompress": _get(info["compress"], "decompress_seconds"),
    }
    for mode, m in info["eval"]["modes"].items():
        t[f"eval {mode}"] = round(sum(m.get("seconds", {}).values()), 2)
    return {k: v for k, v in t.items() if v is not None}


def write_folder(src: RunSource, out: Path, meta: dict, force: bool = False) -> list[str]:
    """Write the records folder; returns the relative paths written."""
    if out.exists() and any(out.iterdir()) and not force:
        raise PgolfError(f"{out} exists and is not empty; pass --force to overwrite")
    info = collect(src)
    sub = submission_json(info, meta)
    files = {
        "submission.json": (json.dumps(sub, indent=2) + "\n").encode(),
        "README.md": readme(info, sub, src.rev).encode(),
        "params.yaml": src.read_bytes("params.yaml"),
    }
    for name in SUBMISSION_FILES:
        files[name] = src.read_bytes(f"artifacts/submission/{name}")
    for pattern in LOG_PATTERNS:
        for rel in src.glob(pattern):
            files[f"logs/{rel}"] = src.read_bytes(rel)
    if out.exists() and force:
        shutil.rmtree(out)
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return sorted(files)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the folder to write, e.g. records/2026-05-01_my_run")
    parser.add_argument("--exp", help="git revision or DVC experiment (default: the workspace)")
    parser.add_argument("--repo", default=".", help="the pgolf repository (default: %(default)s)")
    parser.add_argument("--name", help="submission name (default: the folder name)")
    parser.add_argument("--author", default="", help="author's name")
    parser.add_argument("--github-id", default="", help="author's GitHub id")
    parser.add_argument("--track", default="10min_16mb", help="default: %(default)s")
    parser.add_argument("--hardware", default="", help='e.g. "8xH100 80GB SXM"')
    parser.add_argument("--summary", default="", help="technique_summary (default: a one-line description)")
    parser.add_argument("--date", default=datetime.date.today().isoformat(), help="default: today")
    parser.add_argument("--force", action="store_true", help="replace an existing folder")
    args = parser.parse_args(argv)

    out = Path(args.out)
    meta = {
        "name": args.name or out.name,
        "author": args.author,
        "github_id": args.github_id,
        "track": args.track,
        "hardware": args.hardware,
        "summary": args.summary,
        "date": args.date,
    }
    written = write_folder(RunSource(Path(args.repo), args.exp), out, meta, force=args.force)
    print(f"records: wrote {len(written)} files to {out}: " + ", ".join(w for w in written if "/" not in w))


if __name__ == "__main__":
    run(main)
