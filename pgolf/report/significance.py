"""Is a candidate's seed mean a record against a baseline's? Welch's t-test, the README's rule and the practised one.

Two rules, one table (one row each), both a one-sided Welch test of H0: gain <= margin (gain = baseline mean -
candidate mean; lower is better) rejected at p < alpha; they differ only in the margin and alpha:

* The README rule, from the challenge README: "They must beat the existing SOTA by at least 0.005 nats. As in
  modded-nanogpt, because of inter-run variance all submissions must provide enough run logs to show at
  `p < 0.01` that they achieved the required 0.005-nat improvement." Margin 0.005 nats per token, alpha 0.01.
* The practised rule, by which the maintainers admitted record rows (openai/parameter-golf #1902, #2146): the plain
  test of H0: gain <= 0 against the previous row (the baseline) at p < 0.25, on 3 seeds of one configuration
  (#2124). Fewer than 3 seeds on either side is a warning in the table; with 1 seed Welch's test is undefined
  (the rows say so and the command exits with an error).

Scores are val_bpb. Nats per token = bpb * ln 2 * bytes / tokens, so the 0.005-nat margin in bpb depends on the
tokenizer's bytes per token (3.157 for the record's CaseOps SP8192 on FineWeb val, 3.727 for plain SP8192);
``--bytes-per-token`` sets it, otherwise it is read from the candidate's (then the baseline's) eval metrics. The
practised rule needs no bytes per token.

Each seed result is a number, ``workspace``, or a git revision / DVC experiment name whose ``metrics/eval.json``
is read through ``dvc.api.DVCFileSystem`` (key ``--metric``, default ``modes.lora_ttt.val_bpb``; its mode's
``tokens`` and ``bytes`` give the bytes per token).

References:
    B. L. Welch, "The generalization of 'Student's' problem when several different population variances are
    involved", Biometrika 34 (1947); F. E. Satterthwaite, Biometrics Bulletin 2 (1946) for the degrees of freedom.
    openai/parameter-golf README, "Submission Process" (the README rule); PRs #1902 and #2146 (leaderboard updates
    applying the p < 0.25 progression cutoff), #2124 (a row needs a 3-seed mean of one configuration); record
    PR #1855 (3-seed mean 1.06107587, sample std 0.00111).
"""

from __future__ import annotations

import json
import math
import statistics
import sys
from dataclasses import dataclass

from pgolf.cli import Parser, run
from pgolf.errors import PgolfError
from pgolf.report import optional_import

README_MIN_GAIN_NATS = 0.005  # challenge README, "Submission Process" (quoted above)
README_ALPHA = 0.01  # the same sentence: "at p < 0.01"
# record rows admitted at one-sided Welch p < 0.25 vs the previous row: openai/parameter-golf #1902, #2146
PRACTISED_ALPHA = 0.25
MIN_SEEDS = 3  # a row needs a 3-seed mean of one configuration: openai/parameter-golf #2124


@dataclass(frozen=True)
class Rule:
    """A one-sided Welch test of H0: gain <= min_gain_nats (nats per token), passed at p < alpha."""

    label: str
    min_gain_nats: float
    alpha: float


def readme_rule(min_gain_nats: float = README_MIN_GAIN_NATS, alpha: float = README_ALPHA) -> Rule:
    return Rule(f"README rule (gain >= {min_gain_nats:g} nats, p < {alpha:g})", min_gain_nats, alpha)


def practised_rule(alpha: float = PRACTISED_ALPHA) -> Rule:
    return Rule(f"practised rule (gain > 0, one-sided Welch, p < {alpha:g} vs the previous row)", 0.0, alpha)


@dataclass(frozen=True)
class Group:
    """One side's seed results (val_bpb, lower is better)."""

    name: str
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        for v in self.values:
            if not math.isfinite(v):
                raise PgolfError(f"{self.name}: {v} is not a val_bpb (NaN or infinite); give finite numbers or runs")

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values)

    @property
    def std(self) -> float:
        """Sample standard deviation (ddof = 1), the one a t-test uses."""
        return statistics.stdev(self.values)


@dataclass(frozen=True)
class Welch:
    """Welch's unequal-variance t statistic for baseline mean - candidate mean - shift."""

    t: float
    df: float
    p_one_sided: float  # P(T >= t): small when the candidate is lower than the baseline by more than the shift


def welch_undefined(candidate: Group, baseline: Group) -> str | None:
    """Why Welch's test cannot be computed on these groups (fewer than 2 seeds, no variance), or None."""
    for g in (candidate, baseline):
        if g.n < 2:
            return f"{g.name}: {g.n} value(s); Welch's test needs at least 2 seeds per group"
    if candidate.std == 0.0 and baseline.std == 0.0:
        return "both groups have zero variance; a t-test is undefined"
    return None


def welch(candidate: Group, baseline: Group, shift: float = 0.0) -> Welch:
    """One-sided Welch test of H0: baseline.mean - candidate.mean <= shift, with Welch–Satterthwaite df."""
    reason = welch_undefined(candidate, baseline)
    if reason is not None:
        raise PgolfError(reason)
    vc, vb = candidate.std**2 / candidate.n, baseline.std**2 / baseline.n
    se2 = vc + vb
    t = (baseline.mean - candidate.mean - shift) / math.sqrt(se2)
    df = se2**2 / (vc**2 / (candidate.n - 1) + vb**2 / (baseline.n - 1))
    stats = optional_import("scipy.stats", "scipy>=1.11", "report")
    return Welch(t=t, df=df, p_one_sided=float(stats.t.sf(t, df)))


def bpb_to_nats(bpb: float, bytes_per_token: float) -> float:
    """Nats per token of a bits-per-byte value: bpb * ln 2 * bytes / tokens."""
    return bpb * math.log(2) * bytes_per_token


def judge(rule: Rule, candidate: Group, baseline: Group, bytes_per_token: float | None) -> dict:
    """One row of the table: the rule's H0, Welch's t, df and p, its threshold and the verdict ("passes", "does
    not", or "undefined" / "not evaluated" with the reason in ``note``)."""
    row = {"rule": rule.label, "h0": "gain <= 0", "min_gain_nats": rule.min_gain_nats, "margin_bpb": 0.0}
    row.update(t=None, df=None, p=None, alpha=rule.alpha, verdict=None, passes=None, note=None)
    if rule.min_gain_nats:
        if bytes_per_token is None:
            row.update(h0=f"gain <= {rule.min_gain_nats:g} nats", margin_bpb=None, verdict="not evaluated",
                       note="no bytes per token: pass --bytes-per-token or revisions with eval metrics")  # fmt: skip
            return row
        row["margin_bpb"] = rule.min_gain_nats / (math.log(2) * bytes_per_token)
        row["h0"] = f"gain <= {rule.min_gain_nats:g} nats = {row['margin_bpb']:.6f} bpb"
    reason = welch_undefined(candidate, baseline)
    if reason is not None:
        row.update(verdict="undefined", note=reason)
        return row
    w = welch(candidate, baseline, shift=row["margin_bpb"])
    passes = w.t > 0 and w.p_one_sided < rule.alpha  # t > 0: the mean gain is above the margin
    row.update(t=w.t, df=w.df, p=w.p_one_sided, passes=passes, verdict="passes" if passes else "does not")
    return row


def seed_warnings(candidate: Group, baseline: Group, min_seeds: int = MIN_SEEDS) -> list[str]:
    """A warning when either side has fewer seeds than the practice (3 of one configuration, #2124)."""
    if min(candidate.n, baseline.n) >= min_seeds:
        return []
    return [f"fewer than {min_seeds} seeds (candidate {candidate.n}, baseline {baseline.n}); the practice is "
            f"{min_seeds} seeds of one configuration per side (openai/parameter-golf #2124)"]  # fmt: skip


def compare(
    candidate: Group,
    baseline: Group,
    bytes_per_token: float | None,
    rules: tuple[Rule, ...] | None = None,
) -> dict:
    """Everything the command prints: both groups, the gain in bpb (and nats), one row per rule, the warnings, and
    why Welch's test is undefined (``undefined``; None when it is not). ``rules``: default both, at their
    default thresholds."""
    rules = rules or (readme_rule(), practised_rule())
    gain = baseline.mean - candidate.mean
    return {
        "candidate": _group_dict(candidate),
        "baseline": _group_dict(baseline),
        "gain_bpb": gain,
        "gain_nats": bpb_to_nats(gain, bytes_per_token) if bytes_per_token is not None else None,
        "bytes_per_token": bytes_per_token,
        "rules": [judge(rule, candidate, baseline, bytes_per_token) for rule in rules],
        "warnings": seed_warnings(candidate, baseline),
        "undefined": welch_undefined(candidate, baseline),
    }


def _group_dict(g: Group) -> dict:
    return {"name": g.name, "n": g.n, "mean": g.mean, "std": g.std if g.n > 1 else None, "values": list(g.values)}


# ---------------------------------------------------------------------------------------------------------------
# Reading seed results


def _not_a_revision(rev: str, err: Exception) -> PgolfError:
    return PgolfError(f"{rev!r} is neither a number nor a readable git revision / DVC experiment: {err}")


def _revision(rev: str, repo: str):
    """The files of git revision or experiment ``rev`` (``workspace``: the working tree), through DVC."""
    dvc_api = optional_import("dvc.api", "dvc>=3.60", "pipeline")
    try:
        return dvc_api.DVCFileSystem(repo, rev=None if rev == "workspace" else rev)
    except Exception as err:  # dvc/scmrepo raise several types for an unknown revision
        raise _not_a_revision(rev, err) from err


def _read_rev(fs, rev: str, metric: str, metrics_file: str) -> tuple[float, float | None]:
    """(metric, bytes per token or None) of ``metrics_file`` in ``fs``, the files of revision ``rev``."""
    try:
        text = fs.read_text(metrics_file)
    except FileNotFoundError as err:
        raise PgolfError(f"{rev}: no {metrics_file} there; run the pipeline through evaluate first") from err
    except Exception as err:  # dvc/scmrepo raise several types for an unknown revision
        raise _not_a_revision(rev, err) from err
    flat = _flatten(json.loads(text))
    if metric not in flat:
        keys = ", ".join(sorted(k for k in flat if k.endswith("val_bpb"))) or "none"
        raise PgolfError(f"{rev}: no {metric!r} in {metrics_file} (val_bpb keys there: {keys}); see --metric")
    prefix = metric.rsplit(".", 1)[0] + "." if "." in metric else ""
    tokens, nbytes = flat.get(prefix + "tokens"), flat.get(prefix + "bytes")
    bpt = float(nbytes) / float(tokens) if tokens and nbytes else None
    return float(flat[metric]), bpt


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _seed_of(fs) -> int | None:
    """``train.seed`` of the params in ``fs``, a revision's files (None when it cannot be read)."""
    try:
        import yaml

        return int(yaml.safe_load(fs.read_text("params.yaml"))["train"]["seed"])
    except Exception:  # a revision without params.yaml or a seed: nothing to compare
        return None


def duplicates(name: str, items: list[str], values: list[float], seeds: dict[str, int | None]) -> list[str]:
    """Warnings for results that look like the same seed given twice: two runs of one ``train.seed``, or two
    identical numbers (seeds of one configuration never agree to every digit)."""
    out = []
    by_seed: dict[int, str] = {}
    for item, seed in seeds.items():
        if seed is not None and seed in by_seed:
            out.append(f"{name}: {by_seed[seed]} and {item} both ran train.seed={seed}: one seed twice, not two seeds")
        elif seed is not None:
            by_seed[seed] = item
    seen: dict[float, str] = {}
    for item, value in zip(items, values, strict=True):
        if value in seen and not (item in seeds and seen[value] in seeds):
            out.append(f"{name}: {seen[value]} and {item} give the same val_bpb {value!r}: the same seed twice?")
        seen.setdefault(value, item)
    return out


def resolve(name: str, items: list[str], metric: str, metrics_file: str, repo: str) -> tuple[Group, float | None]:
    """A group from numbers and/or revisions; the mean bytes per token of its revisions (None without any).
    Results that look like one seed twice are reported as warnings (on stderr), not dropped."""
    values, ratios, seeds = [], [], {}
    for item in items:
        try:
            values.append(float(item))
            continue
        except ValueError:
            pass
        fs = _revision(item, repo)
        value, bpt = _read_rev(fs, item, metric, metrics_file)
        values.append(value)
        seeds[item] = _seed_of(fs)
        if bpt is not None:
            ratios.append(bpt)
    group = Group(name, tuple(values))  # refuses NaN and infinities
    for line in duplicates(name, items, values, seeds):
        print(f"warning: {line}", file=sys.stderr)
    return group, (statistics.fmean(ratios) if ratios else None)


# ---------------------------------------------------------------------------------------------------------------
# Command line


def _num(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def format_report(r: dict) -> str:
    lines = [f"{'group':<10} {'seeds':>5} {'mean':>11} {'std (ddof=1)':>13}  values"]
    for key in ("candidate", "baseline"):
        g = r[key]
        vals = " ".join(f"{v:.10g}" for v in g["values"])
        lines.append(f"{key:<10} {g['n']:>5} {g['mean']:>11.8f} {_num(g['std'], '.6f'):>13}  {vals}")
    gain = f"gain (baseline - candidate): {r['gain_bpb']:+.6f} bpb"
    if r["gain_nats"] is not None:
        gain += f" = {r['gain_nats']:+.6f} nats/token at {r['bytes_per_token']:.4f} bytes/token"
    lines += [gain, ""]
    width = max(len(row["rule"]) for row in r["rules"])
    h0_width = max(len(row["h0"]) for row in r["rules"])
    lines.append(f"{'rule':<{width}}  {'H0':<{h0_width}}  {'t':>8}  {'df':>6}  {'p':>9}  {'threshold':<9}  verdict")
    for row in r["rules"]:
        verdict = row["verdict"] + (f": {row['note']}" if row["note"] else "")
        lines.append(
            f"{row['rule']:<{width}}  {row['h0']:<{h0_width}}  {_num(row['t'], '.4f'):>8}  {_num(row['df'], '.2f'):>6}"
            f"  {_num(row['p'], '.3g'):>9}  {'p < ' + format(row['alpha'], 'g'):<9}  {verdict}"
        )
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--candidate", nargs="+", required=True, help="val_bpb per seed, or revisions/experiments")
    parser.add_argument("--baseline", nargs="+", required=True, help="val_bpb per seed, or revisions/experiments")
    parser.add_argument("--metric", default="modes.lora_ttt.val_bpb", help="key in --metrics-file")
    parser.add_argument("--metrics-file", default="metrics/eval.json", help="read at each revision")
    parser.add_argument("--repo", default=".", help="the DVC repository holding the revisions")
    parser.add_argument("--bytes-per-token", type=float, help="val bytes / val tokens (default: from the metrics)")
    parser.add_argument("--min-gain-nats", type=float, default=README_MIN_GAIN_NATS,
                        help="the README rule's margin; default: %(default)s")  # fmt: skip
    parser.add_argument("--alpha", type=float, default=README_ALPHA, help="the README rule's p; default: %(default)s")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    for flag, value in (("--bytes-per-token", args.bytes_per_token), ("--min-gain-nats", args.min_gain_nats),
                        ("--alpha", args.alpha)):  # fmt: skip
        if value is not None and not (math.isfinite(value) and value > 0):
            raise PgolfError(f"{flag} must be a finite positive number, got {value}")
    if args.alpha >= 1:
        raise PgolfError(f"--alpha is a p-value threshold below 1, got {args.alpha}")
    candidate, bpt_c = resolve("candidate", args.candidate, args.metric, args.metrics_file, args.repo)
    baseline, bpt_b = resolve("baseline", args.baseline, args.metric, args.metrics_file, args.repo)
    bpt = args.bytes_per_token or bpt_c or bpt_b
    if bpt is not None and bpt <= 0:
        raise PgolfError(f"--bytes-per-token must be positive, got {bpt}")
    result = compare(candidate, baseline, bpt, (readme_rule(args.min_gain_nats, args.alpha), practised_rule()))
    print(json.dumps(result, indent=2) if args.json else format_report(result))
    if result["undefined"] is not None:  # the table above says so in each row; the exit status says it too
        raise PgolfError(f"no verdict: {result['undefined']}")


if __name__ == "__main__":
    run(main)
