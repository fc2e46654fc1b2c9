"""pgolf.report.records: the records folder (submission.json, README, logs), timings counted once, compliance as
measured, the reported rung."""

import json
import statistics
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from pgolf.errors import PgolfError
from pgolf.report import records
from tests.helpers.common import ROOT
from tests.helpers.report import records_summary, records_workspace

pytest.importorskip("scipy.stats")  # the guards of its former file (tests/test_report.py)
pytest.importorskip("vl_convert")
pytest.importorskip("dvc")


META = {
    "name": "run",
    "author": "A",
    "github_id": "a",
    "track": "10min_16mb",
    "hardware": "8xH100",
    "summary": "",
    "date": "2026-05-01",
}


def _info(summary: dict) -> dict:
    return {"params": {"train": {"seed": 42}}, "summary": summary, "eval": {}, "train": {}, "rev": None}


def test_records_folder(tmp_path):
    ws, out = records_workspace(tmp_path / "ws"), tmp_path / "records/run"
    written = records.write_folder([records.RunSource(ws, None)], out, META)
    assert {"README.md", "submission.json", "model.bin", "train_gpt.py", "requirements.txt", "params.yaml",
            "train_seed42.log"} <= set(written)  # fmt: skip
    assert "logs/seed42/metrics/train/plots/metrics/train/loss.tsv" in written
    sub = json.loads((out / "submission.json").read_text())
    identity = {k: sub[k] for k in ("author", "github_id", "name", "date", "track", "hardware", "pytorch_version")}
    assert identity == {"author": "A", "github_id": "a", "name": "run", "date": "2026-05-01", "track": "10min_16mb",
                        "hardware": "8xH100", "pytorch_version": records._torch_version()}  # fmt: skip
    assert sub["technique_summary"].endswith("scored by lora_ttt")
    code = (out / "train_gpt.py").stat().st_size
    assert sub["val_bpb"] == 1.06 and sub["eval_mode"] == "lora_ttt" and sub["ladder"] == records_summary()["ladder"]
    assert sub["seeds"] == [42] and sub["code_file"] == "train_gpt.py" and sub["bytes_code"] == code
    assert sub["seed_results"] == {"42": {"val_bpb": 1.06, "artifact_bytes": 15_880_000 + code, "val_loss": 2.226,
                                          "steps": 4900, "step_avg_ms": 120.0, "train_wallclock_ms": 588_000,
                                          "eval_time_s": 470.0}}  # fmt: skip
    assert (sub["bytes_total"], sub["bytes_model"]) == (15_880_000 + code, 15_880_000) and sub["val_loss"] == 2.226
    assert (
        sub["compliant"] is True and sub["compliance"] == records_summary()["compliance"] and "val_bpb_std" not in sub
    )
    assert (out / "model.bin").read_bytes() == b"PGOLF\x00model"
    assert (out / "train_seed42.log").read_text().splitlines()[
        -1
    ] == "final lora_ttt val_loss:2.22600000 val_bpb:1.06000000"
    assert "brotli>=1.1" in (out / "requirements.txt").read_text() and "lrzip" in (out / "requirements.txt").read_text()
    text = (out / "README.md").read_text()
    layers = f"`model.num_layers` | `{read_params(ROOT / 'params.yaml')['model']['num_layers']}`"
    assert "1.06000000" in text and layers in text and "python train_gpt.py" in text
    assert "| Technique | Setting | From |" in text and "| LQER" in text and "#1855" in text
    assert "Compliant: **yes**" in text
    with pytest.raises(PgolfError, match="--force"):
        records.write_folder([records.RunSource(ws, None)], out, META)
    (ws / "metrics/summary.json").write_text(json.dumps({**records_summary(), "bytes": {"model": 1, "code": 1}}))
    with pytest.raises(PgolfError, match=r"metrics/summary.json has no bytes.total .*`dvc repro summary`"):
        records.write_folder([records.RunSource(ws, None)], tmp_path / "other", META)
    (ws / "metrics/summary.json").unlink()
    with pytest.raises(PgolfError, match=r"metrics/summary.json is missing in .*`dvc repro summary`"):
        records.write_folder([records.RunSource(ws, None)], tmp_path / "other", META)


def test_three_seeds_give_their_mean_and_sample_std_and_the_largest_artifact(tmp_path):
    runs = [
        records_workspace(tmp_path / f"s{seed}", seed, shift) for seed, shift in ((1, 0.0), (2, 0.002), (3, -0.001))
    ]
    sub = records.submission_json([records.collect(records.RunSource(r, None)) for r in runs], META, 99_000)
    bpbs = [1.06, 1.062, 1.059]
    assert sub["seeds"] == [1, 2, 3] and [r["val_bpb"] for r in sub["seed_results"].values()] == bpbs
    assert sub["val_bpb"] == round(statistics.fmean(bpbs), 8) and sub["val_bpb_std"] == round(statistics.stdev(bpbs), 8)
    assert sub["bytes_total"] == 15_880_000 + 99_000 and sub["compliant"]
    reproduce = "\n".join(records._reproduce(sub, "a b c"))
    assert all(f"train_gpt.py --seed {seed}" in reproduce for seed in (1, 2, 3))  # one command per seed


def test_the_seeds_must_be_one_configuration_of_this_code(tmp_path):
    one, two = records_workspace(tmp_path / "a", 1), records_workspace(tmp_path / "b", 1, 0.001)
    with pytest.raises(PgolfError, match=r"the runs share a seed \(\[1, 1\]\)"):
        records.write_folder([records.RunSource(one, None), records.RunSource(two, None)], tmp_path / "o", META)
    other = records_workspace(tmp_path / "c", 2)
    params = yaml.safe_load((other / "params.yaml").read_text())
    params["model"]["num_layers"] += 1
    (other / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(PgolfError, match=r"params differ .* beyond train.seed \(sections model\)"):
        records.write_folder([records.RunSource(one, None), records.RunSource(other, None)], tmp_path / "o", META)
    (one / "artifacts/submission/train_gpt.py").write_text("exec('')\n")
    with pytest.raises(PgolfError, match=r"train_gpt.py is not this checkout's code; check out the commit"):
        records.write_folder([records.RunSource(one, None)], tmp_path / "o", META)


def test_records_timings_count_each_part_once(tmp_path):
    """Each eval mode's clock both ways, labelled (scoring with TTT; + decompression and warm-up); train and
    calibrate as measured, not added."""
    records_workspace(tmp_path / "ws")
    records.write_folder([records.RunSource(tmp_path / "ws", None)], tmp_path / "out", META)
    sub = json.loads((tmp_path / "out/submission.json").read_text())
    assert sub["timings"] == {"train_seconds": 588.0, "calibrate_seconds": 9.5,
                              "eval_seconds": {"sliding": 30.0, "lora_ttt": 470.0},
                              "eval_strict_seconds": {"sliding": 33.0, "lora_ttt": 495.0}}  # fmt: skip
    text = (tmp_path / "out/README.md").read_text()
    assert "| eval lora_ttt (scoring + TTT) | 470.0 |" in text and "| eval sliding (scoring + TTT) | 30.0 |" in text
    assert "| eval lora_ttt (strict: + decompression + warm-up) | 495.0 |" in text
    assert "597.5" not in text.split("## Timings")[1]  # train + calibrate: two lines, never their sum


def _with(path: str, value) -> dict:
    summary = records_summary()
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
    info = _info(_with(path, value))
    sub = records.submission_json([info], META, 20_000)
    assert sub["failed_checks"] == failed and sub["compliant"] is (not failed)
    assert records_summary()["compliance"] != sub["compliance"]  # written as measured, the failing value included
    assert ("Compliant: **yes**" in records.readme(info, sub, None)) is (not failed)


def test_records_report_lora_ttt_else_the_last_rung():
    assert records.reported_rung({"sliding": 1.1, "lora_ttt": 1.0, "chunk_sgd": 0.9}) == "lora_ttt"
    assert records.reported_rung({"prequant_ema": 1.2, "dequantized": 1.3, "sliding": 1.1}) == "sliding"
    with pytest.raises(PgolfError, match="empty ladder"):
        records.reported_rung({})
    summary = _with("ladder", {"dequantized": 1.3, "model_bin": 1.3})  # no eval mode ran: nothing audited the score
    sub = records.submission_json([_info(summary)], META, 20_000)
    assert sub["val_bpb"] == 1.3 and sub["failed_checks"] == ["eval.model_bin.audit: none"] and not sub["compliant"]


def test_the_records_key_parameters_exist_in_params_and_every_preset():
    for path in [
        Path(__file__).resolve().parents[2] / "params.yaml",
        *sorted((Path(__file__).resolve().parents[2] / "presets").rglob("*.yaml")),
    ]:
        params = read_params(path)
        for key in records.KEY_PARAMS:
            node = params
            for part in key.split("."):
                assert isinstance(node, dict) and part in node, f"{path.name}: {key} (pgolf.report.records.KEY_PARAMS)"
                node = node[part]


@pytest.mark.parametrize(("measured", "label", "written"), [
    ("8x NVIDIA H100 80GB HBM3", "8xH100 80GB SXM", "8xH100 80GB SXM"),
    ("8x NVIDIA H100 80GB HBM3", "", "8x NVIDIA H100 80GB HBM3"),
    ("1x cpu", "8xH100 80GB SXM", None),  # the README's old example on a CPU run
    ("8x NVIDIA H200", "8xH100", None),
    ("1x NVIDIA H100 80GB HBM3", "8xH100", None),
])  # fmt: skip
def test_a_hardware_label_that_contradicts_the_measurement_is_refused(measured, label, written):
    if written is None:
        with pytest.raises(PgolfError, match="contradicts the hardware the run measured"):
            records.hardware_label(measured, label)
    else:
        assert records.hardware_label(measured, label) == written
