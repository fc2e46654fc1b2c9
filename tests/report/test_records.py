"""pgolf.report.records: the records folder (submission.json, README, logs), timings counted once, compliance as
measured, the reported rung."""

import json
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from pgolf.errors import PgolfError
from pgolf.report import records

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


def _summary() -> dict:
    """metrics/summary.json of a run that passes every check (the summary stage's shape: each mode's clock as
    scoring with TTT, ``practice``, and with decompression and warm-up, ``strict``)."""

    def mode(parts: tuple[float, float, float]) -> dict:
        names = ("decompress_seconds", "warmup_seconds", "scoring_seconds")
        return {**dict(zip(names, parts, strict=True)), "practice_seconds": parts[2], "strict_seconds": sum(parts),
                "budget_seconds": 600.0, "within": True, "within_strict": sum(parts) <= 600.0,
                "audit": "compliant"}  # fmt: skip

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
                "hardware": "8x NVIDIA H100 80GB HBM3",
                "train_seconds": 588.0,
                "calibrate_seconds": 9.5,
                "total_seconds": 597.5,
                "budget_seconds": 600.0,
                "within": True,
            },
            "eval": {"sliding": mode((3.0, 0.0, 30.0)), "lora_ttt": mode((20.0, 5.0, 470.0))},
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
    assert records.submission_json(info, {**META, "hardware": ""})["hardware"] == "8x NVIDIA H100 80GB HBM3"
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
    """Each eval mode's clock both ways, labelled (scoring with TTT; + decompression and warm-up); train and
    calibrate as measured, not added."""
    _fake_workspace(tmp_path / "ws")
    records.write_folder(records.RunSource(tmp_path / "ws", None), tmp_path / "out", META)
    sub = json.loads((tmp_path / "out/submission.json").read_text())
    assert sub["timings"] == {"train_seconds": 588.0, "calibrate_seconds": 9.5,
                              "eval_seconds": {"sliding": 30.0, "lora_ttt": 470.0},
                              "eval_strict_seconds": {"sliding": 33.0, "lora_ttt": 495.0}}  # fmt: skip
    text = (tmp_path / "out/README.md").read_text()
    assert "| eval lora_ttt (scoring + TTT) | 470.0 |" in text and "| eval sliding (scoring + TTT) | 30.0 |" in text
    assert "| eval lora_ttt (strict: + decompression + warm-up) | 495.0 |" in text
    assert "597.5" not in text.split("## Timings")[1]  # train + calibrate: two lines, never their sum


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
