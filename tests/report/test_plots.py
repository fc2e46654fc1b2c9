"""pgolf.report.plots: Vega-Lite to PNG offline, and the plots of a DVC project."""

import pytest
import yaml

from pgolf.errors import PgolfError
from pgolf.report import plots
from tests.helpers.common import ROOT
from tests.helpers.report import git_dvc_repo

pytest.importorskip("scipy.stats")  # the guards of its former file (tests/test_report.py)
pytest.importorskip("vl_convert")
pytest.importorskip("dvc")


def test_spec_to_png():
    spec = {
        "data": {"values": [{"x": 1, "y": 2}, {"x": 2, "y": 1}]},
        "mark": "line",
        "encoding": {"x": {"field": "x", "type": "quantitative"}, "y": {"field": "y", "type": "quantitative"}},
    }
    assert plots.to_png(spec).startswith(b"\x89PNG\r\n\x1a\n")
    assert plots.file_name("metrics/eval_phases.csv") == "metrics_eval_phases.png"


def test_render_from_a_dvc_project(tmp_path):
    git_dvc_repo(tmp_path)
    (tmp_path / "m.csv").write_text("documents,val_bpb_so_far\n16,1.7\n32,1.6\n")
    dvc_yaml = {"plots": [{"ttt": {"template": "simple", "x": "documents", "y": {"m.csv": "val_bpb_so_far"}}}]}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(dvc_yaml))
    written = plots.render(tmp_path, tmp_path / "png", None, None, False)
    assert [p.name for p in written] == ["ttt.png"] and written[0].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(PgolfError, match="no plot"):
        plots.render(tmp_path, tmp_path / "png", None, ["nope"], False)


def test_the_score_ladder_keeps_ladder_order_on_an_axis_that_spans_the_rungs(tmp_path):
    """dvc.yaml's score_ladder through the project's own template (.dvc/plots/ladder.json), for two revisions: the
    rungs in the ladder's order (not alphabetical), an x axis not forced to 0 (1.6213 and 1.6281 look apart), one
    colour per revision."""
    run = git_dvc_repo(tmp_path)
    (tmp_path / ".dvc" / "plots").mkdir()
    (tmp_path / ".dvc" / "plots" / "ladder.json").write_text((ROOT / ".dvc" / "plots" / "ladder.json").read_text())
    (ladder,) = [p["score_ladder"] for p in yaml.safe_load((ROOT / "dvc.yaml").read_text())["plots"]
                 if "score_ladder" in p]  # fmt: skip
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"plots": [{"score_ladder": ladder}]}))
    rungs = ["prequant_raw", "prequant_ema", "dequantized", "model_bin", "lora_ttt"]
    for i, shift in enumerate((0.0, -0.002)):
        rows = [f"{r},{1.6213 + 0.001 * k + shift}" for k, r in enumerate(rungs)]
        (tmp_path / "metrics").mkdir(exist_ok=True)
        (tmp_path / "metrics" / "ladder.csv").write_text("rung,val_bpb\n" + "\n".join(rows) + "\n")
        run("git", "add", "-A")
        run("git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", f"run {i}")
    spec = plots.dvc_plot_specs(tmp_path, ["HEAD~1", "HEAD"])["score_ladder"]
    encoding = spec["encoding"]
    assert encoding["y"]["sort"] is None and encoding["x"]["scale"]["zero"] is False
    assert [v["rung"] for v in spec["data"]["values"]][: len(rungs)] == rungs
    assert encoding["color"]["field"] == "rev" and len({v["rev"] for v in spec["data"]["values"]}) == 2
    assert plots.to_png(spec).startswith(b"\x89PNG")
