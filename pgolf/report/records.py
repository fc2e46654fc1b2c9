"""Write a challenge-style records folder for a finished run: README.md, submission.json, logs, code and model.

The layout follows openai/parameter-golf ``records/track_10min_16mb/<date>_<name>/``: a README explaining the run,
``submission.json``, the logs, and the code. Every number in both is a measurement read from
``metrics/summary.json`` (the summary stage): val_bpb per rung of the ladder, the bytes, the compliance checks as
measured (wall-clock budgets, the score-first audit, the artifact limit, train/val overlap) and the timings, each
counted once. The other fields are the identity ones of the merged records (e.g.
2026-04-09_SP8192_3LayerRecur_ParResid_QK525_LegalTTT: author, github_id, name, date, track, hardware,
pytorch_version, seeds, technique_summary), given on the command line. The code is ``train_gpt.py``, the submission
program of :mod:`pgolf.report.package` (checked to be the code each run was scored with), with ``requirements.txt``;
the artifact is the first seed's ``model.bin``; each seed gets ``train_seed<N>.log`` (the records' log lines) and
its ``metrics/`` files under ``logs/seed<N>/``.

The runs are the workspace by default, or git revisions / DVC experiments (``--exp a b c``: one per seed of one
configuration), read through ``dvc.api.DVCFileSystem`` (metrics from git, ``artifacts/submission`` from the local
DVC cache); their mean and sample std are the reported val_bpb and val_bpb_std.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import shutil
import statistics
from pathlib import Path

import yaml

from pgolf.cli import Parser, run
from pgolf.compress.bundle import PROGRAM_FILE
from pgolf.config import dotted
from pgolf.errors import PgolfError
from pgolf.eval.reported import reported_mode
from pgolf.report import optional_import, package
from pgolf.report.lineage import technique_table
from pgolf.report.summary import on_budget_hardware

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
    "score.docs",
    "eval.lora_ttt.rank",
    "eval.lora_ttt.phases",
)
SUMMARY_FILE = "metrics/summary.json"
SUMMARY_KEYS = (
    "documents.count",
    "ladder",
    *(f"bytes.{k}" for k in ("model", "code", "total")),
    *(
        f"compliance.train.{k}"
        for k in ("hardware", "train_seconds", "calibrate_seconds", "total_seconds", "budget_seconds", "within")
    ),  # fmt: skip
    "compliance.eval",
    *(f"compliance.artifact.{k}" for k in ("bytes", "limit", "within")),
    *(f"compliance.data.{k}" for k in ("val_documents", "train_documents", "overlap", "passed")),
)
EVAL_KEYS = ("practice_seconds", "strict_seconds", "budget_seconds", "within", "audit")  # of each compliance.eval mode


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

    @property
    def where(self) -> str:
        return str(self.repo) if self.rev is None else f"revision {self.rev} (or not in the local DVC cache)"

    def exists(self, rel: str) -> bool:
        if self.fs is None:
            return (self.repo / rel).is_file()
        return self.fs.isfile(rel)

    def read_bytes(self, rel: str) -> bytes:
        if not self.exists(rel):
            raise PgolfError(f"{rel} is missing in {self.where}; run the pipeline through evaluate (dvc repro) first")
        return self.fs.read_bytes(rel) if self.fs is not None else (self.repo / rel).read_bytes()

    def glob(self, pattern: str) -> list[str]:
        if self.fs is not None:
            return sorted(p.lstrip("/") for p in self.fs.glob(pattern) if self.fs.isfile(p))
        return sorted(str(p.relative_to(self.repo)) for p in self.repo.glob(pattern) if p.is_file())

    def json(self, rel: str) -> dict:
        return json.loads(self.read_bytes(rel))


def _get(tree: dict, key: str):
    return dotted(tree, key, None)


def read_summary(src: RunSource) -> dict:
    """metrics/summary.json, checked for every key the records folder reads."""
    if not src.exists(SUMMARY_FILE):
        raise PgolfError(
            f"{SUMMARY_FILE} is missing in {src.where}; run `dvc repro summary` first (every measured field of the "
            "records folder comes from it)"
        )
    summary = src.json(SUMMARY_FILE)
    modes = _get(summary, "compliance.eval") or {}
    keys = [*SUMMARY_KEYS, *(f"compliance.eval.{m}.{k}" for m in modes for k in EVAL_KEYS)]
    missing = [k for k in keys if _get(summary, k) is None]
    if missing:
        raise PgolfError(
            f"{SUMMARY_FILE} has no {', '.join(missing)} (an older summary stage?); run `dvc repro summary`"
        )
    return summary


def collect(src: RunSource) -> dict:
    """The run's params, its measurements (metrics/summary.json; eval and train metrics when present) and its
    counted code (the bundle it was scored with)."""
    optional = {name: src.json(f"metrics/{name}.json") if src.exists(f"metrics/{name}.json") else {}
                for name in ("eval", "train")}  # fmt: skip
    params = src.read_bytes("params.yaml")
    return {"params": yaml.safe_load(params), "params_bytes": params, "summary": read_summary(src), **optional,
            "code": src.read_bytes(f"artifacts/submission/{PROGRAM_FILE}"), "rev": src.rev}  # fmt: skip


def one_configuration(infos: list[dict]) -> None:
    """The seeds of a submission are runs of one configuration: params equal but for ``train.seed``, each seed
    once (the practice: 3 seeds, #2124)."""
    seeds = [_get(i["params"], "train.seed") for i in infos]
    if len(set(seeds)) != len(seeds):
        raise PgolfError(f"--exp: the runs share a seed ({seeds}); a records folder needs one run per seed")
    base = {**infos[0]["params"], "train": {**infos[0]["params"].get("train", {}), "seed": None}}
    for info in infos[1:]:
        other = {**info["params"], "train": {**info["params"].get("train", {}), "seed": None}}
        if other != base:
            keys = sorted({k for k in base.keys() | other.keys() if base.get(k) != other.get(k)})
            first = infos[0]["rev"] or "the workspace"
            raise PgolfError(f"--exp {info['rev']}: its params differ from {first}'s beyond train.seed (sections "
                             f"{', '.join(keys)}); the seeds must be one configuration")  # fmt: skip


def reported_rung(ladder: dict[str, float]) -> str:
    """The reported score: phased LoRA TTT when it ran (the record's), else the ladder's last rung."""
    if not ladder:
        raise PgolfError(f"{SUMMARY_FILE} has an empty ladder; run `dvc repro summary` after evaluate")
    return reported_mode(list(ladder))


def failed_checks(summary: dict, mode: str) -> list[str]:
    """The compliance checks that do not hold, as measured: the train budget, every eval mode's budget, the
    artifact limit, the train/val overlap, and the reported mode's score-first audit (which must be "compliant";
    a rung that no eval mode scored has no audit and fails it)."""
    c = summary["compliance"]
    checks = {"train.within": c["train"]["within"], "artifact.within": c["artifact"]["within"],
              "data.passed": c["data"]["passed"]}  # fmt: skip
    checks |= {f"eval.{m}.within": e["within"] for m, e in c["eval"].items()}
    failed = [name for name, holds in checks.items() if holds is not True]
    audit = c["eval"].get(mode, {}).get("audit", "none")
    if audit != "compliant":
        failed.append(f"eval.{mode}.audit: {audit}")
    return failed


def timings(summary: dict) -> dict:
    """Seconds, each counted once: training and calibration (the train budget's two parts, not their total), and
    each eval mode's total (its decompression, warm-up and scoring are parts of it, never added to it)."""
    train, evals = summary["compliance"]["train"], summary["compliance"]["eval"]
    return {"train_seconds": train["train_seconds"], "calibrate_seconds": train["calibrate_seconds"],
            "eval_seconds": {m: e["practice_seconds"] for m, e in evals.items()},
            "eval_strict_seconds": {m: e["strict_seconds"] for m, e in evals.items()}}  # fmt: skip


def hardware_label(measured: str, label: str) -> str:
    """The hardware submission.json names: ``label`` (e.g. ``8xH100 80GB SXM``) when it names the device count and
    the device the run measured (``8x NVIDIA H100 80GB HBM3``), the measured string when no label is given; a
    label that contradicts the measurement (``8xH100`` for a ``1x cpu`` run) is refused."""
    if not label:
        return measured
    count, _, name = label.partition("x")
    if not name.split() or not on_budget_hardware(measured, f"{count}x{name.split()[0]}"):  # device count and name
        raise PgolfError(f"--hardware {label!r} contradicts the hardware the run measured ({measured!r}); "
                         "leave it out to write the measured one")  # fmt: skip
    return label


def seed_result(info: dict, mode: str, code_bytes: int) -> dict:
    """One seed's entry of ``seed_results``: its score, its artifact (its model.bin + train_gpt.py), its steps and
    clocks, as the run measured them."""
    summary, clock = info["summary"], info["summary"]["compliance"]["train"]
    out = {"val_bpb": round(summary["ladder"][mode], 8), "artifact_bytes": summary["bytes"]["model"] + code_bytes}
    if (loss := _get(info["eval"], f"modes.{mode}.val_loss")) is not None:
        out["val_loss"] = round(loss, 8)
    if steps := info["train"].get("steps"):
        out |= {"steps": steps, "step_avg_ms": round(1000 * clock["train_seconds"] / steps, 2)}
    out["train_wallclock_ms"] = round(1000 * clock["train_seconds"])
    if (evaluation := summary["compliance"]["eval"].get(mode)) is not None:
        out["eval_time_s"] = evaluation["practice_seconds"]
    return out


def submission_json(infos: list[dict], meta: dict, code_bytes: int) -> dict:
    """submission.json: the measured fields of each seed's run (metrics/summary.json, eval and train metrics), the
    code bytes of train_gpt.py, and the identity fields of ``meta``; the mean and sample std over the seeds."""
    first = infos[0]["summary"]
    mode = reported_rung(first["ladder"])
    results = {str(_get(i["params"], "train.seed")): seed_result(i, mode, code_bytes) for i in infos}
    bpbs = [r["val_bpb"] for r in results.values()]
    failed = [f"seed {seed}: {check}" if len(infos) > 1 else check
              for seed, info in zip(results, infos, strict=True)
              for check in failed_checks(info["summary"], mode)]  # fmt: skip
    total, limit = max(r["artifact_bytes"] for r in results.values()), first["compliance"]["artifact"]["limit"]
    if total > limit:
        failed.append(f"artifact: model.bin + train_gpt.py = {total:,} bytes > {limit:,}")
    out = {"author": meta["author"], "github_id": meta["github_id"], "name": meta["name"], "date": meta["date"],
           "track": meta["track"], "val_bpb": round(statistics.fmean(bpbs), 8)}  # fmt: skip
    if len(bpbs) > 1:
        out["val_bpb_std"] = round(statistics.stdev(bpbs), 8)
    if all("val_loss" in r for r in results.values()):
        out["val_loss"] = round(statistics.fmean(r["val_loss"] for r in results.values()), 8)
    return out | {
        "eval_mode": mode,
        "eval_documents": first["documents"]["count"],
        "ladder": {rung: round(bpb, 8) for rung, bpb in first["ladder"].items()},
        "seeds": [int(seed) for seed in results],
        "seed_results": results,
        "bytes_total": total,
        "bytes_model": max(i["summary"]["bytes"]["model"] for i in infos),
        "bytes_code": code_bytes,
        "code_file": PROGRAM_FILE,
        "hardware": hardware_label(first["compliance"]["train"]["hardware"], meta["hardware"]),
        "pytorch_version": _torch_version(),
        "technique_summary": meta["summary"] or f"pgolf (PR #1855 recipe as a DVC pipeline), scored by {mode}",
        "compliant": not failed,
        "failed_checks": failed,
        "compliance": first["compliance"],
        "timings": timings(first),
    }


def _torch_version() -> str | None:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return None


def _compliance_rows(c: dict) -> list[str]:
    train, art, data = c["train"], c["artifact"], c["data"]
    rows = [f"| train + calibrate ({train['hardware']}) | {train['total_seconds']} s | {train['budget_seconds']} s "
            f"| {train['within']} |"]  # fmt: skip
    rows += [
        f"| eval {m} (audit: {e['audit']}; scoring + TTT, strict {e['strict_seconds']} s) | "
        f"{e['practice_seconds']} s | {e['budget_seconds']} s | {e['within']} |"
        for m, e in c["eval"].items()
    ]
    rows.append(f"| artifact | {art['bytes']:,} bytes | {art['limit']:,} bytes | {art['within']} |")
    rows.append(f"| train/val overlap ({data['val_documents']} val, {data['train_documents']} train documents) | "
                f"{data['overlap']} | 0 | {data['passed']} |")  # fmt: skip
    return rows


def _reproduce(sub: dict, rev: str | None) -> list[str]:
    """The README's last section: the packaged program, or the pipeline at the runs' revisions."""
    seeds = ", ".join(map(str, sub["seeds"]))
    lines = ["## Reproduce", "", f"Seeds {seeds}. With the challenge's data beside it, per seed (N: the devices):", "",
             "```bash"]  # fmt: skip
    lines += [f"torchrun --standalone --nproc_per_node=N {PROGRAM_FILE} --seed {seed}   # or: python {PROGRAM_FILE} "
              f"--seed {seed}" for seed in sub["seeds"]]  # fmt: skip
    lines += ["cat train.log   # the lines of train_seed<seed>.log; final_model.bin is the artifact", "```", "",
              "Or, in the pgolf repository:", "", "```bash"]  # fmt: skip
    lines += ["dvc repro"] if rev is None else [f"dvc exp apply {rev.split()[0]}  # or: git checkout; per seed",
                                                "dvc repro"]  # fmt: skip
    return lines + [
        "dvc metrics show",
        "```",
        "",
        f"`{PROGRAM_FILE}` unpacks itself (`pgolf/`, `stages/`) and runs every stage from the tokenizer's adoption to "
        "the evaluation in one job (train, calibrate and evaluate on every rank under torchrun); its bytes are the "
        "counted code.",
        "",
    ]


def readme(info: dict, sub: dict, rev: str | None) -> str:
    """README.md: what ran, the ladder, the bytes, the compliance checks, the timings and how to reproduce it
    (``rev``: the run's revision, or the seeds' revisions joined by spaces; None: the workspace)."""
    verdict = "yes" if sub["compliant"] else "no (" + ", ".join(sub["failed_checks"]) + ")"
    lines = [
        f"# {sub['name']}",
        "",
        f"val_bpb **{sub['val_bpb']:.8f}** ({sub['eval_mode']}, {sub['eval_documents']} val documents), "
        f"artifact **{sub['bytes_total']:,} bytes**, run {'workspace' if rev is None else rev}, {sub['date']}. "
        f"Compliant: **{verdict}**.",
        "",
        "## val_bpb ladder",
        "",
        "| rung | val_bpb |",
        "|---|---|",
    ]
    lines += [f"| {rung} | {bpb:.8f} |" for rung, bpb in sub["ladder"].items()]
    lines += [
        "",
        "## Bytes",
        "",
        f"| model.bin (largest seed) | {PROGRAM_FILE} | total |",
        "|---|---|---|",
        f"| {sub['bytes_model']:,} | {sub['bytes_code']:,} | {sub['bytes_total']:,} |",
        "",
        "## Compliance (measured)",
        "",
        "| check | measured | limit | holds |",
        "|---|---|---|---|",
        *_compliance_rows(sub["compliance"]),
        "",
        "## Timings (seconds, each counted once)",
        "",
        "| timing | seconds |",
        "|---|---|",
    ]
    t = sub["timings"]
    lines += [f"| {k} | {t[k]} |" for k in ("train_seconds", "calibrate_seconds")]
    lines += [f"| eval {m} (scoring + TTT) | {v} |" for m, v in t["eval_seconds"].items()]
    lines += [f"| eval {m} (strict: + decompression + warm-up) | {v} |" for m, v in t["eval_strict_seconds"].items()]
    lines += [
        "",
        "## Techniques",
        "",
        "What the params turn on, and the pull requests each comes from (pgolf's notes; `—`: none named).",
        "",
        technique_table(info["params"]).rstrip("\n"),
    ]
    lines += ["", "## Key parameters", "", "| key | value |", "|---|---|"]
    lines += [f"| `{k}` | `{v}` |" for k in KEY_PARAMS if (v := _get(info["params"], k)) is not None]
    lines += ["", "The full parameters are in `params.yaml`; the metrics and training curves in `logs/`.", ""]
    lines += _reproduce(sub, rev)
    return "\n".join(lines)


def seed_log(info: dict, sub: dict) -> str:
    """A seed's log lines, as the records' logs print them."""
    seed = _get(info["params"], "train.seed")
    result = sub["seed_results"][str(seed)]
    loss = f"val_loss:{result['val_loss']:.8f} " if "val_loss" in result else ""
    lines = [f"seed: {seed}", f"Code size: {sub['bytes_code']} bytes",
             f"Total submission size: {result['artifact_bytes']} bytes",
             f"train_time: {result['train_wallclock_ms']}ms",
             f"final {sub['eval_mode']} {loss}val_bpb:{result['val_bpb']:.8f}"]  # fmt: skip
    return "\n".join(lines) + "\n"


def write_folder(srcs: list[RunSource], out: Path, meta: dict, force: bool = False) -> list[str]:
    """Write the records folder of one run per seed (one configuration); returns the relative paths written."""
    if out.exists() and any(out.iterdir()) and not force:
        raise PgolfError(f"{out} exists and is not empty; pass --force to overwrite")
    infos = [collect(src) for src in srcs]
    one_configuration(infos)
    runs = {info["rev"] or "the workspace's artifacts": (info["params"], info["code"]) for info in infos}
    program = package.checked_program(runs)
    sub = submission_json(infos, meta, len(program))
    revs = None if srcs[0].rev is None else " ".join(str(s.rev) for s in srcs)
    files = {
        "submission.json": (json.dumps(sub, indent=2) + "\n").encode(),
        "README.md": readme(infos[0], sub, revs).encode(),
        "params.yaml": infos[0]["params_bytes"],
        PROGRAM_FILE: program,
        "requirements.txt": package.requirements(infos[0]["params"]).encode(),
        "model.bin": srcs[0].read_bytes("artifacts/submission/model.bin"),
    }
    for src, info in zip(srcs, infos, strict=True):
        seed = _get(info["params"], "train.seed")
        files[f"train_seed{seed}.log"] = seed_log(info, sub).encode()
        for pattern in LOG_PATTERNS:
            for rel in src.glob(pattern):
                files[f"logs/seed{seed}/{rel}"] = src.read_bytes(rel)
    if out.exists() and force:
        shutil.rmtree(out)
    for rel, data in files.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    return sorted(files)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="the folder to write, e.g. records/2026-05-01_my_run")
    parser.add_argument(
        "--exp",
        nargs="+",
        help="git revisions or DVC experiments, one per seed of one configuration (default: the workspace)",
    )
    parser.add_argument("--repo", default=".", help="the pgolf repository (default: %(default)s)")
    parser.add_argument("--name", help="submission name (default: the folder name)")
    parser.add_argument("--author", default="", help="author's name")
    parser.add_argument("--github-id", default="", help="author's GitHub id")
    parser.add_argument("--track", default="10min_16mb", help="default: %(default)s")
    parser.add_argument("--hardware", default="", help='e.g. "8xH100 80GB SXM" (default: the one measured)')
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
    sources = [RunSource(Path(args.repo), rev) for rev in args.exp or [None]]
    written = write_folder(sources, out, meta, force=args.force)
    print(f"records: wrote {len(written)} files to {out}: " + ", ".join(w for w in written if "/" not in w))


if __name__ == "__main__":
    run(main)
