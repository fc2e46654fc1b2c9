"""pgolf.report.check_records: real records folders (tests/report/data/records, sources in SOURCE.md), one minimal
failing case per check, a folder pgolf.report.records writes, and the command line."""

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.errors import PgolfError
from pgolf.report import check_records, records
from tests.helpers.report import records_workspace

DATA = Path(__file__).parent / "data" / "records"
SEED_BPB = (1.0011, 1.1013, 1.2017)
PASSING = ("2026-03-17_NaiveBaseline", "2026-04-08_SP8192_ParallelResid_ScoreFirstTTT")


def _errors(findings):
    return [(f.file, f.field) for f in findings if f.severity == "error"]


def _warnings(findings):
    return [(f.file, f.field) for f in findings if f.severity == "warning"]


@pytest.mark.parametrize("name", PASSING)
def test_real_folders_pass_with_warnings_only(name):
    findings = check_records.check_folder(DATA / name)
    assert _errors(findings) == [] and findings  # old records lack recommended fields


def test_real_folders_logs_agree_with_json():
    """Each real log's size, code size and final val_bpb lines were found and matched (no 'not found' warning)."""
    for name in (*PASSING, "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611"):
        findings = check_records.check_folder(DATA / name)
        assert not [f for f in findings if f.file.endswith(".log") and f.severity == "error"], name
        assert not [f for f in findings if "found in log" in f.message], name


def test_pr1855_std_is_the_population_std():
    """PR #1855 reports val_bpb_std 0.00090: the population std of its seeds (a warning: a convention, not a wrong
    number); the sample std, which a significance test uses, is 0.00111."""
    findings = check_records.check_folder(DATA / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")
    assert _errors(findings) == []
    std = next(f for f in findings if f.field == "val_bpb_std")
    assert std.severity == "warning" and "population std (ddof 0)" in std.message and "0.001106" in std.message
    assert any(f.field == "val_loss_std" and f.severity == "warning" for f in findings)


def test_0405_bytes_total_is_the_mean():
    findings = check_records.check_folder(DATA / "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2")
    assert _errors(findings) == [("submission.json", "bytes_total")]
    assert "15,985,678 (the seeds' mean) is not the largest seed artifact, 15,988,983" in findings[1].message


# --- one minimal failing case per check -------------------------------------------------------------------------


MEAN, STD = round(statistics.fmean(SEED_BPB), 8), round(statistics.stdev(SEED_BPB), 8)


def _sub(**changes) -> dict:
    """A consistent three-seed submission.json: val_bpb and val_bpb_std the seeds' mean and sample std."""
    seeds = {"1": 1.0011, "2": 1.1013, "3": 1.2017}
    sub = {"author": "A", "github_id": "a", "name": "n", "blurb": "b", "date": "2026-05-01", "track": "10min_16mb",
           "val_loss": 2.0011, "val_bpb": MEAN, "val_bpb_std": STD, "seeds": [1, 2, 3],
           "seed_results": {s: {"val_bpb": v, "val_loss": 2.0011, "artifact_bytes": 15_000_000 + int(s), "steps": 10,
                                "train_wallclock_ms": 599_000, "eval_time_s": 500.0} for s, v in seeds.items()},
           "bytes_total": 15_000_003, "bytes_code": 30_000, "hardware": "8xH100", "pytorch_version": "2.9.1",
           "compliance": {"train_under_600s": True}}  # fmt: skip
    sub.update(changes)
    return sub


def _log(seed: str, size: int, bpb: str = "1.0011", code: int = 30_000) -> str:
    return (f"seed: {seed}\nCode size: {code} bytes\nTotal submission size: 99 bytes\n"
            f"Total submission size int8+zlib: {size} bytes\nfinal val_loss:2.0011 val_bpb:{bpb}\n")  # fmt: skip


def _folder(root: Path, sub: dict | None = None, logs: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    sub = _sub() if sub is None else sub
    (root / "README.md").write_text("# run\n")
    (root / "train_gpt.py").write_text("print()\n")
    (root / "submission.json").write_text(json.dumps(sub))
    default = {f"train_seed{s}.log": _log(s, r["artifact_bytes"], str(r["val_bpb"]))
               for s, r in sub.get("seed_results", {}).items()}  # fmt: skip
    for name, text in (default if logs is None else logs).items():
        (root / name).write_text(text)
    return root


def test_minimal_folder_is_clean(tmp_path):
    assert check_records.check_folder(_folder(tmp_path)) == []


@pytest.mark.parametrize(
    ("remove", "expected"),
    [
        ("README.md", ("README.md", "-")),
        ("submission.json", ("submission.json", "-")),
        ("train_gpt.py", ("train_gpt.py", "-")),
    ],  # fmt: skip
)
def test_layout_missing_file(tmp_path, remove, expected):
    folder = _folder(tmp_path)
    (folder / remove).unlink()
    (folder / "helper.py").write_text("")  # two scripts left: no guess at the code file
    (folder / "other.py").write_text("")
    assert expected in _errors(check_records.check_folder(folder))


def test_layout_no_log_and_named_code_file(tmp_path):
    folder = _folder(tmp_path, _sub(code_file="code.py"), logs={})
    assert _errors(check_records.check_folder(folder)) == [("code.py", "-"), ("logs", "-")]


def test_fields_required_type_and_recommended(tmp_path):
    sub = _sub(val_bpb="1.1")
    del sub["author"], sub["hardware"]
    findings = check_records.check_folder(_folder(tmp_path, sub))
    assert ("submission.json", "author") in _errors(findings) and ("submission.json", "val_bpb") in _errors(findings)
    assert _warnings(findings) == [("submission.json", "hardware")]


def test_seed_over_limit_and_bytes_total_not_max(tmp_path):
    sub = _sub()
    sub["seed_results"]["2"]["artifact_bytes"] = 16_000_001
    findings = check_records.check_folder(_folder(tmp_path, sub))
    assert _errors(findings) == [("submission.json", "seed_results.2.artifact_bytes"),
                                 ("submission.json", "bytes_total")]  # fmt: skip


def test_seeds_list_mismatch_and_too_few(tmp_path):
    sub = _sub(seeds=[1, 2, 4])
    assert _errors(check_records.check_folder(_folder(tmp_path / "a", sub))) == [("submission.json", "seeds")]
    sub = _sub(seeds=[1], val_bpb=1.0, bytes_total=15_000_001)
    sub["seed_results"] = {"1": sub["seed_results"]["1"]}
    findings = check_records.check_folder(_folder(tmp_path / "b", sub))
    assert _errors(findings) == [] and ("submission.json", "seeds") in _warnings(findings)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"val_bpb": 1.12}, "val_bpb"),
        ({"val_bpb_std": round(2 * statistics.stdev(SEED_BPB), 8)}, "val_bpb_std"),
        ({"val_loss": 2.01}, "val_loss"),
    ],  # fmt: skip
)
def test_mean_and_sample_std(tmp_path, changes, field):
    """A std that is neither the sample nor the population one is an error; the sample std passes
    (test_minimal_folder_is_clean), the population std is a warning."""
    assert _errors(check_records.check_folder(_folder(tmp_path, _sub(**changes)))) == [("submission.json", field)]


def test_the_population_std_is_a_warning(tmp_path):
    findings = check_records.check_folder(_folder(tmp_path, _sub(val_bpb_std=round(statistics.pstdev(SEED_BPB), 8))))
    assert _errors(findings) == [] and ("submission.json", "val_bpb_std") in _warnings(findings)


def test_std_tolerance_is_the_printed_digits(tmp_path):
    """Slack: half the reported digit plus the seeds' rounding (4 decimals here: about 6e-5 on the std)."""
    assert check_records.check_folder(_folder(tmp_path / "a", _sub(val_bpb_std=round(STD + 2e-4, 8)))) != []
    assert check_records.check_folder(_folder(tmp_path / "b", _sub(val_bpb_std=round(STD, 4)))) == []
    assert check_records.half_unit(check_records.Decimal("0.00090")) == pytest.approx(5e-6)


def test_timings_over_600_seconds(tmp_path):
    sub = _sub(compliance={"eval_time_max_s": 600.5, "gptq_reserve_seconds": 700})
    sub["seed_results"]["1"]["train_wallclock_ms"] = 600_001
    findings = check_records.check_folder(_folder(tmp_path, sub))
    assert _errors(findings) == [("submission.json", "seed_results.1.train_wallclock_ms"),
                                 ("submission.json", "compliance.eval_time_max_s")]  # fmt: skip


def test_log_contradicts_json(tmp_path):
    logs = {"train_seed1.log": _log("1", 15_000_009), "train_seed2.log": _log("2", 15_000_002, bpb="1.2017"),
            "train_seed3.log": _log("3", 15_000_003, bpb="1.2017", code=31_000)}  # fmt: skip
    findings = check_records.check_folder(_folder(tmp_path, logs=logs))
    assert _errors(findings) == [("train_seed1.log", "line 4"), ("train_seed2.log", "line 5"),
                                 ("train_seed3.log", "bytes_code")]  # fmt: skip


def test_log_lines_not_found_are_warnings(tmp_path):
    logs = {f"train_seed{s}.log": "nothing here\n" for s in "123"}
    findings = check_records.check_folder(_folder(tmp_path, logs=logs))
    assert _errors(findings) == [] and len([f for f in findings if "found in log" in f.message]) == 9


def test_log_seed_from_content(tmp_path):
    """A log named without its seed (train.log) is matched by its ``seed: N`` line."""
    logs = {"train.log": _log("2", 15_000_002, "1.1013"), "train_seed1.log": _log("1", 15_000_001),
            "train_seed3.log": _log("3", 15_000_003, "1.2017")}  # fmt: skip
    assert check_records.check_folder(_folder(tmp_path, logs=logs)) == []


# --- a folder pgolf.report.records writes -----------------------------------------------------------------------


def test_pgolf_records_folder_of_three_seeds_passes(tmp_path):
    """The writer's folder of three seeds of one configuration (train_gpt.py, a log per seed, the mean and sample
    std) has no error and no warning but the fields no pgolf run measures; a time over 600 s is an error."""
    runs = [records_workspace(tmp_path / f"s{seed}", seed, shift) for seed, shift in ((1, 0.0), (2, 0.002), (3, 0.0))]
    meta = {"name": "run", "author": "A", "github_id": "a", "track": "10min_16mb", "hardware": "", "summary": "",
            "date": "2026-05-01"}  # fmt: skip
    out = tmp_path / "records/run"
    records.write_folder([records.RunSource(ws, None) for ws in runs], out, meta)
    findings = check_records.check_folder(out)
    assert _errors(findings) == [] and _warnings(findings) == [], findings
    sub = json.loads((out / "submission.json").read_text())
    sub["compliance"]["eval"]["lora_ttt"]["practice_seconds"] = 601.0
    (out / "submission.json").write_text(json.dumps(sub))
    assert _errors(check_records.check_folder(out)) == [
        ("submission.json", "compliance.eval.lora_ttt.practice_seconds")
    ]


# --- the command line -------------------------------------------------------------------------------------------


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "pgolf.report.check_records", *map(str, args)], capture_output=True,
                          text=True, cwd=Path(__file__).parents[2])  # fmt: skip


def test_cli_exit_status_summary_and_json(tmp_path):
    flagged = _cli(DATA / "2026-04-05_SP8192_GPTQ-Embeddings_SDClip_Loop45x2")
    assert flagged.returncode == 1 and " 1 errors, " in flagged.stdout.splitlines()[-1]
    assert "error: submission.json: bytes_total: 15,985,678 (the seeds' mean)" in flagged.stdout
    warned = _cli(DATA / "2026-04-27_SP8192_LQER_SparseGate_BOSSmearFix_9HpStack_1.0611")
    assert warned.returncode == 0
    assert "warning: submission.json: val_bpb_std: 0.00090 is the population" in warned.stdout
    clean = _cli(_folder(tmp_path / "ok"), "--json")
    assert clean.returncode == 0 and json.loads(clean.stdout) | {"folder": ""} == {
        "folder": "", "errors": 0, "warnings": 0, "findings": []}  # fmt: skip
    missing = _cli(tmp_path / "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: ") and "not a folder" in missing.stderr
    with pytest.raises(PgolfError, match="not a folder"):
        check_records.check_folder(tmp_path / "nope")
