"""pgolf.report.significance: Welch's test, the README's 0.005-nat rule and the practised p < 0.25 rule on the
records' seeds, the seed-count warning and one seed, the command, values read from git revisions."""

import json
import math
import subprocess
import sys

import pytest

from pgolf.cli import run
from pgolf.errors import PgolfError
from pgolf.report import significance
from pgolf.report.significance import Group, compare, welch
from tests.helpers.report import git_dvc_repo

stats = pytest.importorskip("scipy.stats")
pytest.importorskip("vl_convert")
pytest.importorskip("dvc")


# Post-TTT val_bpb / val_loss of record #1855's seeds 42, 0, 1234 (the record's README), and the reported
# seeds of #1492 (42, 314, 999) and #1802 (42, 314, 999) (their READMEs).
PR1855_BPB = (1.05989454, 1.06124613, 1.06208695)


PR1855_LOSS = (2.31944212, 2.32239991, 2.32423994)


PR1492_BPB = (1.08079, 1.08103, 1.08118)


PR1802_BPB = (1.07700, 1.07676, 1.07763)


CASEOPS_BYTES_PER_TOKEN = 3.157  # FineWeb val, the record's CaseOps SP8192 tokenizer


def rows(r: dict) -> dict:
    """The table's rows by the rule's first word: "README" and "practised"."""
    return {row["rule"].split()[0]: row for row in r["rules"]}


def test_record_three_seed_statistics():
    bpb, loss = Group("1855", PR1855_BPB), Group("1855", PR1855_LOSS)
    assert bpb.n == 3
    assert bpb.mean == pytest.approx(1.06107587, abs=5e-9)
    assert round(bpb.std, 5) == 0.00111  # sample std; the README's 0.00090 is the population std
    assert round(statistics_pstdev(PR1855_BPB), 5) == 0.00090
    # the same bytes per token for every seed: val_loss = val_bpb * ln 2 * bytes/tokens
    ratios = [lo / (b * math.log(2)) for b, lo in zip(PR1855_BPB, PR1855_LOSS, strict=True)]
    assert max(ratios) - min(ratios) < 1e-6 and ratios[0] == pytest.approx(CASEOPS_BYTES_PER_TOKEN, abs=1e-3)
    assert significance.bpb_to_nats(bpb.mean, ratios[0]) == pytest.approx(loss.mean, abs=1e-7)


def statistics_pstdev(values):
    import statistics

    return statistics.pstdev(values)


def test_welch_hand_checked_and_against_scipy():
    # means 2 and 5, variances 1 and 1, n 3 and 3: se = sqrt(2/3), t = 3 / se, df = 4
    w = welch(Group("c", (1.0, 2.0, 3.0)), Group("b", (4.0, 5.0, 6.0)))
    assert w.t == pytest.approx(3 / math.sqrt(2 / 3)) and w.df == pytest.approx(4.0)
    assert w.p_one_sided == pytest.approx(stats.t.sf(3 / math.sqrt(2 / 3), 4))
    c, b = PR1855_BPB, PR1492_BPB
    ref = stats.ttest_ind(c, b, equal_var=False, alternative="less")
    w = welch(Group("c", c), Group("b", b))
    assert w.t == pytest.approx(-ref.statistic) and w.p_one_sided == pytest.approx(ref.pvalue)
    assert w.df == pytest.approx(ref.df)


def test_rule_1855_beats_1492_and_1802():
    for baseline in (PR1492_BPB, PR1802_BPB):
        r = compare(Group("c", PR1855_BPB), Group("b", baseline), CASEOPS_BYTES_PER_TOKEN)
        assert rows(r)["README"]["passes"] is True and rows(r)["README"]["p"] < 0.01
        assert rows(r)["practised"]["passes"] is True
        assert r["gain_nats"] == pytest.approx(r["gain_bpb"] * math.log(2) * CASEOPS_BYTES_PER_TOKEN)
    r = compare(Group("c", PR1855_BPB), Group("b", PR1492_BPB), CASEOPS_BYTES_PER_TOKEN)
    assert r["gain_bpb"] == pytest.approx(1.08100 - 1.06107587, abs=1e-8)


def test_rule_fails_below_the_margin_or_without_significance():
    min_gain_bpb = 0.005 / (math.log(2) * CASEOPS_BYTES_PER_TOKEN)  # 0.00228 bpb
    # significantly better (tight seeds), but by less than 0.005 nats: not a record
    tight = (1.0599, 1.0600, 1.0601)
    close = tuple(v + 0.8 * min_gain_bpb for v in tight)
    r = compare(Group("c", tight), Group("b", close), CASEOPS_BYTES_PER_TOKEN)
    assert rows(r)["practised"]["p"] < 0.01 and r["gain_nats"] < 0.005 and rows(r)["README"]["passes"] is False
    # just above the margin with the same tight seeds: a record
    r = compare(Group("c", tight), Group("b", tuple(v + 1.5 * min_gain_bpb for v in tight)), CASEOPS_BYTES_PER_TOKEN)
    assert rows(r)["README"]["passes"] is True
    # a large mean gain with too much seed noise: not a record
    noisy = (1.050, 1.062, 1.074)
    r = compare(Group("c", noisy), Group("b", PR1492_BPB), CASEOPS_BYTES_PER_TOKEN)
    assert r["gain_nats"] > 0.005 and rows(r)["README"]["p"] >= 0.01 and rows(r)["README"]["passes"] is False
    # no bytes per token: the README rule is not evaluated; the practised one (no margin) still is
    r = rows(compare(Group("c", PR1855_BPB), Group("b", PR1492_BPB), None))
    assert r["README"]["verdict"] == "not evaluated" and r["README"]["passes"] is None
    assert r["practised"]["passes"] is True


# The example in README.md: three seeds each, 0.0011 bpb (0.0024 nats) apart, so significant at the practised
# rule's p < 0.25 and short of the README rule's margin.
DISAGREE_C, DISAGREE_B = (1.0590, 1.0601, 1.0612), (1.0611, 1.0620, 1.0605)


def test_the_two_rules_disagree_each_matching_scipy():
    r = compare(Group("c", DISAGREE_C), Group("b", DISAGREE_B), CASEOPS_BYTES_PER_TOKEN)
    readme, practised = rows(r)["README"], rows(r)["practised"]
    assert readme["rule"] == "README rule (gain >= 0.005 nats, p < 0.01)" and readme["alpha"] == 0.01
    assert practised["rule"] == "practised rule (gain > 0, one-sided Welch, p < 0.25 vs the previous row)"
    assert practised["alpha"] == 0.25 and practised["h0"] == "gain <= 0"
    # practised: H0 gain <= 0, i.e. H1 candidate mean < baseline mean
    ref = stats.ttest_ind(DISAGREE_C, DISAGREE_B, equal_var=False, alternative="less")
    assert practised["t"] == pytest.approx(-ref.statistic) and practised["df"] == pytest.approx(ref.df)
    assert practised["p"] == pytest.approx(ref.pvalue) and 0.01 < ref.pvalue < 0.25
    assert practised["verdict"] == "passes" and practised["passes"] is True
    # README: H0 gain <= margin, i.e. H1 baseline mean - margin > candidate mean
    margin = 0.005 / (math.log(2) * CASEOPS_BYTES_PER_TOKEN)
    ref = stats.ttest_ind([b - margin for b in DISAGREE_B], DISAGREE_C, equal_var=False, alternative="greater")
    assert readme["margin_bpb"] == pytest.approx(margin) and readme["t"] == pytest.approx(ref.statistic)
    assert readme["df"] == pytest.approx(ref.df) and readme["p"] == pytest.approx(ref.pvalue) and ref.pvalue > 0.5
    assert readme["verdict"] == "does not" and readme["passes"] is False
    assert r["warnings"] == [] and r["undefined"] is None


def test_the_command_prints_one_row_per_rule(capsys):
    argv = ["--candidate", *map(str, DISAGREE_C), "--baseline", *map(str, DISAGREE_B), "--bytes-per-token", "3.157"]
    significance.main(argv)
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["group", "seeds"] and out[1].split()[:2] == ["candidate", "3"]
    head = next(i for i, line in enumerate(out) if line.startswith("rule "))
    assert out[head].split() == ["rule", "H0", "t", "df", "p", "threshold", "verdict"]
    readme, practised = out[head + 1 :]
    assert readme.startswith("README rule (gain >= 0.005 nats, p < 0.01)") and readme.endswith("p < 0.01   does not")
    assert practised.startswith("practised rule (gain > 0, one-sided Welch, p < 0.25 vs the previous row)")
    assert practised.endswith("p < 0.25   passes") and "0.118" in practised
    significance.main([*argv, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert [row["verdict"] for row in result["rules"]] == ["does not", "passes"]


def test_fewer_than_three_seeds_is_a_warning(capsys):
    for c, b in ((DISAGREE_C[:2], DISAGREE_B), (DISAGREE_C, DISAGREE_B[:2])):
        (line,) = compare(Group("c", c), Group("b", b), CASEOPS_BYTES_PER_TOKEN)["warnings"]
        assert f"candidate {len(c)}, baseline {len(b)}" in line and "#2124" in line
    assert compare(Group("c", DISAGREE_C), Group("b", DISAGREE_B), None)["warnings"] == []
    significance.main(["--candidate", "1.06", "1.061", "--baseline", *map(str, DISAGREE_B)])
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("warning: fewer than 3 seeds (candidate 2, baseline 3)")


def test_one_seed_is_an_undefined_row_not_a_crash(monkeypatch, capsys):
    r = compare(Group("candidate", (1.06,)), Group("baseline", DISAGREE_B), CASEOPS_BYTES_PER_TOKEN)
    assert r["undefined"] == "candidate: 1 value(s); Welch's test needs at least 2 seeds per group"
    for row in r["rules"]:
        assert row["verdict"] == "undefined" and row["note"] == r["undefined"]
        assert row["t"] is row["p"] is row["passes"] is None
    assert len(r["warnings"]) == 1 and r["candidate"]["std"] is None
    # zero variance on both sides: undefined too
    (row, _) = compare(Group("c", (1.0, 1.0)), Group("b", (1.1, 1.1)), CASEOPS_BYTES_PER_TOKEN)["rules"]
    assert row["verdict"] == "undefined" and "zero variance" in row["note"]
    # the command prints the table, then exits 1 with one error line
    args = ["--candidate", "1.06", "--baseline", *map(str, DISAGREE_B), "--bytes-per-token", "3.157"]
    monkeypatch.setattr(sys, "argv", ["significance.py", *args])
    with pytest.raises(SystemExit) as stop:
        run(significance.main)
    captured = capsys.readouterr()
    assert stop.value.code == 1 and captured.err.splitlines() == [f"error: no verdict: {r['undefined']}"]
    table = [line for line in captured.out.splitlines() if line.startswith(("README", "practised"))]
    assert len(table) == 2 and all(line.endswith("undefined: " + r["undefined"]) for line in table)


def test_welch_needs_two_seeds():
    with pytest.raises(PgolfError, match="at least 2"):
        welch(Group("c", (1.06,)), Group("b", PR1492_BPB))


def test_significance_cli(capsys):
    argv = ["--candidate", *map(str, PR1855_BPB), "--baseline", *map(str, PR1492_BPB)]
    significance.main([*argv, "--bytes-per-token", "3.157"])
    out = capsys.readouterr().out
    assert "1.06107587" in out and out.count("  passes") == 2
    significance.main([*argv, "--json"])
    result = json.loads(capsys.readouterr().out)
    assert rows(result)["README"]["verdict"] == "not evaluated" and rows(result)["practised"]["passes"] is True


def test_significance_reads_revisions(tmp_path):
    run = git_dvc_repo(tmp_path)
    (tmp_path / "metrics").mkdir()
    revs = []
    for bpb in (1.0, 1.1):
        mode = {"val_bpb": bpb, "val_loss": 2.0, "tokens": 100, "bytes": 300}
        (tmp_path / "metrics/eval.json").write_text(json.dumps({"modes": {"lora_ttt": mode}}))
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"bpb {bpb}")
        revs.append(subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=tmp_path, text=True).strip())
    group, bpt = significance.resolve(
        "c", [revs[0], "HEAD", "1.2"], "modes.lora_ttt.val_bpb", "metrics/eval.json", str(tmp_path)
    )
    assert group.values == (1.0, 1.1, 1.2) and bpt == pytest.approx(3.0)
    with pytest.raises(PgolfError, match="no 'modes.plain.val_bpb'"):
        significance.resolve("c", ["HEAD"], "modes.plain.val_bpb", "metrics/eval.json", str(tmp_path))


def test_duplicate_seeds_are_a_warning_not_an_error(monkeypatch, capsys):
    args = ["--candidate", "1.10", "1.10", "1.12", "--baseline", "1.2", "1.21", "1.22", "--bytes-per-token", "3.2"]
    monkeypatch.setattr(sys, "argv", ["significance.py", *args])
    run(significance.main)
    captured = capsys.readouterr()
    assert any(line.startswith("practised rule") for line in captured.out.splitlines())
    assert captured.err.strip().splitlines() == [
        "warning: candidate: 1.10 and 1.10 give the same val_bpb 1.1: the same seed twice?"
    ]
