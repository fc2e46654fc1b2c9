"""pgolf.report: Welch's test and the 0.005-nat rule on the records' seeds, the records folder, offline plots."""

import json
import math
import subprocess
import sys

import pytest
import yaml

from pgolf.errors import PgolfError
from pgolf.report import plots, records, significance
from pgolf.report.significance import Group, compare, welch

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
        assert r["record"] is True and r["rule"]["p_one_sided"] < 0.01
        assert r["gain_nats"] == pytest.approx(r["gain_bpb"] * math.log(2) * CASEOPS_BYTES_PER_TOKEN)
    r = compare(Group("c", PR1855_BPB), Group("b", PR1492_BPB), CASEOPS_BYTES_PER_TOKEN)
    assert r["gain_bpb"] == pytest.approx(1.08100 - 1.06107587, abs=1e-8)


def test_rule_fails_below_the_margin_or_without_significance():
    min_gain_bpb = 0.005 / (math.log(2) * CASEOPS_BYTES_PER_TOKEN)  # 0.00228 bpb
    # significantly better (tight seeds), but by less than 0.005 nats: not a record
    tight = (1.0599, 1.0600, 1.0601)
    close = tuple(v + 0.8 * min_gain_bpb for v in tight)
    r = compare(Group("c", tight), Group("b", close), CASEOPS_BYTES_PER_TOKEN)
    assert r["welch"]["p_one_sided"] < 0.01 and r["gain_nats"] < 0.005 and r["record"] is False
    # just above the margin with the same tight seeds: a record
    r = compare(Group("c", tight), Group("b", tuple(v + 1.5 * min_gain_bpb for v in tight)), CASEOPS_BYTES_PER_TOKEN)
    assert r["record"] is True
    # a large mean gain with too much seed noise: not a record
    noisy = (1.050, 1.062, 1.074)
    r = compare(Group("c", noisy), Group("b", PR1492_BPB), CASEOPS_BYTES_PER_TOKEN)
    assert r["gain_nats"] > 0.005 and r["rule"]["p_one_sided"] >= 0.01 and r["record"] is False
    # no bytes per token: statistics only
    assert compare(Group("c", PR1855_BPB), Group("b", PR1492_BPB), None)["record"] is None


def test_welch_needs_two_seeds():
    with pytest.raises(PgolfError, match="at least 2"):
        welch(Group("c", (1.06,)), Group("b", PR1492_BPB))


def test_significance_cli(capsys):
    argv = ["--candidate", *map(str, PR1855_BPB), "--baseline", *map(str, PR1492_BPB)]
    significance.main([*argv, "--bytes-per-token", "3.157"])
    out = capsys.readouterr().out
    assert "1.06107587" in out and "record: YES" in out
    significance.main([*argv, "--json"])
    assert json.loads(capsys.readouterr().out)["rule"] is None


def _git_dvc_repo(path):
    run = lambda *a: subprocess.run(a, cwd=path, check=True, capture_output=True)  # noqa: E731
    run("git", "init", "-q")
    run(sys.executable, "-m", "dvc", "init", "-q")
    return run


def test_significance_reads_revisions(tmp_path):
    run = _git_dvc_repo(tmp_path)
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


# ---------------------------------------------------------------------------------------------------------------


META = {
    "name": "run",
    "author": "A",
    "github_id": "a",
    "track": "10min_16mb",
    "hardware": "8xH100",
    "summary": "",
    "date": "2026-05-01",
}


def _summary() -> dict:
    """metrics/summary.json of a run that passes every check. Its eval parts add up to more than their totals
    (495 s for lora_ttt's 480 s, 33 s for sliding's 30 s), as parts that overlap do, so a timing that sums them
    shows."""

    def mode(parts: tuple[float, float, float], total: float) -> dict:
        names = ("decompress_seconds", "warmup_seconds", "scoring_seconds")
        return {**dict(zip(names, parts, strict=True)), "total_seconds": total, "budget_seconds": 600.0,
                "within": True, "audit": "compliant"}  # fmt: skip

    return {
        "documents": {"count": 50000, "targets": 40_000_000, "bytes": 151_000_000, "sha256": "ab" * 32},
        "ladder": {
            "prequant_ema": 1.09,
            "dequantized": 1.1,
            "model_bin": 1.1,
            "sliding": 1.08,
            "lora_ttt": 1.06,
            "chunk_sgd": 1.07,
        },
        "bytes": {"model": 15_880_000, "code": 20_000, "total": 15_900_000, "limit": 16_000_000, "fits": True},
        "compliance": {
            "train": {
                "hardware": "cuda x8",
                "train_seconds": 588.0,
                "calibrate_seconds": 9.5,
                "total_seconds": 597.5,
                "budget_seconds": 600.0,
                "within": True,
            },
            "eval": {"sliding": mode((3.0, 0.0, 30.0), 30.0), "lora_ttt": mode((20.0, 5.0, 470.0), 480.0)},
            "artifact": {"bytes": 15_900_000, "limit": 16_000_000, "within": True},
            "data": {"val_documents": 50000, "train_documents": 3000, "overlap": 0, "passed": True},
        },
    }


def _fake_workspace(root):
    (root / "metrics/train/plots/metrics/train").mkdir(parents=True)
    (root / "artifacts/submission").mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump({"train": {"seed": 42}, "model": {"num_layers": 11}}))
    (root / "metrics/summary.json").write_text(json.dumps(_summary()))
    (root / "metrics/quantize_tensors.csv").write_text("name,layer,rel_error\nw,0,0.1\n")
    (root / "metrics/train/plots/metrics/train/loss.tsv").write_text("step\tloss\n1\t7.0\n2\t6.0\n")
    (root / "artifacts/submission/model.bin").write_bytes(b"PGOLF\x00model")
    (root / "artifacts/submission/pgolf_code.py").write_text("exec('')\n")


def test_records_folder(tmp_path):
    ws, out = tmp_path / "ws", tmp_path / "records/run"
    _fake_workspace(ws)
    written = records.write_folder(records.RunSource(ws, None), out, META)
    assert {"README.md", "submission.json", "model.bin", "pgolf_code.py", "params.yaml"} <= set(written)
    assert "logs/metrics/train/plots/metrics/train/loss.tsv" in written and "logs/metrics/summary.json" in written
    sub = json.loads((out / "submission.json").read_text())
    identity = {k: sub[k] for k in ("author", "github_id", "name", "date", "track", "hardware", "pytorch_version")}
    assert identity == {"author": "A", "github_id": "a", "name": "run", "date": "2026-05-01", "track": "10min_16mb",
                        "hardware": "8xH100", "pytorch_version": records._torch_version()}  # fmt: skip
    assert sub["technique_summary"].endswith("scored by lora_ttt")
    info = records.collect(records.RunSource(ws, None))
    assert records.submission_json(info, {**META, "hardware": ""})["hardware"] == "cuda x8"  # the measured one
    assert sub["val_bpb"] == 1.06 and sub["eval_mode"] == "lora_ttt" and sub["ladder"] == _summary()["ladder"]
    assert sub["seeds"] == [42] and sub["seed_results"] == {"42": {"val_bpb": 1.06, "artifact_bytes": 15_900_000}}
    assert (sub["bytes_total"], sub["bytes_model"], sub["bytes_code"]) == (15_900_000, 15_880_000, 20_000)
    assert sub["compliant"] is True and sub["compliance"] == _summary()["compliance"]
    assert not {"val_bpb_std", "val_loss"} & set(sub)  # not measured by the summary: not written
    assert (out / "model.bin").read_bytes() == b"PGOLF\x00model"
    text = (out / "README.md").read_text()
    assert "1.06000000" in text and "15,900,000" in text and "`model.num_layers` | `11`" in text and "dvc repro" in text
    assert "Compliant: **yes**" in text
    with pytest.raises(PgolfError, match="--force"):
        records.write_folder(records.RunSource(ws, None), out, META)
    (ws / "metrics/summary.json").write_text(json.dumps({**_summary(), "bytes": {"model": 1, "code": 1}}))
    with pytest.raises(PgolfError, match=r"metrics/summary.json has no bytes.total .*`dvc repro summary`"):
        records.write_folder(records.RunSource(ws, None), tmp_path / "other", META)
    (ws / "metrics/summary.json").unlink()
    with pytest.raises(PgolfError, match=r"metrics/summary.json is missing in .*`dvc repro summary`"):
        records.write_folder(records.RunSource(ws, None), tmp_path / "other", META)


def test_records_timings_count_each_part_once(tmp_path):
    """Each eval mode's total, never the sum of its parts (which overlap); train and calibrate as measured."""
    _fake_workspace(tmp_path / "ws")
    records.write_folder(records.RunSource(tmp_path / "ws", None), tmp_path / "out", META)
    sub = json.loads((tmp_path / "out/submission.json").read_text())
    assert sub["timings"] == {"train_seconds": 588.0, "calibrate_seconds": 9.5,
                              "eval_seconds": {"sliding": 30.0, "lora_ttt": 480.0}}  # fmt: skip
    text = (tmp_path / "out/README.md").read_text()
    assert "| eval lora_ttt (total) | 480.0 |" in text and "| eval sliding (total) | 30.0 |" in text
    assert "495" not in text and "33.0" not in text


def _with(path: str, value) -> dict:
    summary = _summary()
    *parents, key = path.split(".")
    node = summary
    for part in parents:
        node = node[part]
    node[key] = value
    return summary


@pytest.mark.parametrize(
    ("path", "value", "failed"),
    [
        ("compliance.eval.lora_ttt.audit", "violated", ["eval.lora_ttt.audit: violated"]),
        ("compliance.eval.lora_ttt.audit", "unaudited", ["eval.lora_ttt.audit: unaudited"]),
        ("compliance.eval.sliding.within", False, ["eval.sliding.within"]),
        ("compliance.train.within", False, ["train.within"]),
        ("compliance.artifact.within", False, ["artifact.within"]),
        ("compliance.data.passed", False, ["data.passed"]),
        ("compliance.eval.sliding.audit", "unaudited", []),  # not the reported mode: its audit is not the score's
    ],
)
def test_records_compliance_is_the_measured_checks(path, value, failed):
    info = {"params": {"train": {"seed": 42}}, "summary": _with(path, value)}
    sub = records.submission_json(info, META)
    assert sub["failed_checks"] == failed and sub["compliant"] is (not failed)
    assert _summary()["compliance"] != sub["compliance"]  # written as measured, the failing value included
    assert ("Compliant: **yes**" in records.readme(info, sub, None)) is (not failed)


def test_records_report_lora_ttt_else_the_last_rung():
    assert records.reported_rung({"sliding": 1.1, "lora_ttt": 1.0, "chunk_sgd": 0.9}) == "lora_ttt"
    assert records.reported_rung({"prequant_ema": 1.2, "dequantized": 1.3, "sliding": 1.1}) == "sliding"
    with pytest.raises(PgolfError, match="empty ladder"):
        records.reported_rung({})
    summary = _with("ladder", {"dequantized": 1.3, "model_bin": 1.3})  # no eval mode ran: nothing audited the score
    sub = records.submission_json({"params": {}, "summary": summary}, META)
    assert sub["val_bpb"] == 1.3 and sub["failed_checks"] == ["eval.model_bin.audit: none"] and not sub["compliant"]


# ---------------------------------------------------------------------------------------------------------------


def test_spec_to_png():
    spec = {
        "data": {"values": [{"x": 1, "y": 2}, {"x": 2, "y": 1}]},
        "mark": "line",
        "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}},
    }
    assert plots.to_png(spec).startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.file_name("metrics/eval_phases.csv") == "metrics_eval_phases.png"


def test_render_from_a_dvc_project(tmp_path):
    _git_dvc_repo(tmp_path)
    (tmp_path / "m.csv").write_text("documents,val_bpb_so_far\n16,1.7\n32,1.6\n")
    dvc_yaml = {"plots": [{"ttt": {"template": "simple", "x": "documents", "y": {"m.csv": "val_bpb_so_far"}}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    written = plots.render(tmp_path, tmp_path / "png", None, None, False)
    assert [p.name for p in written] == ["ttt.png"] and written[0].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(PgolfError, match="no plot"):
        plots.render(tmp_path, tmp_path / "png", None, ["nope"], False)
