"""pgolf.report.plots: Vega-Lite to PNG offline, and the plots of a DVC project."""

import pytest
import yaml

from pgolf.errors import PgolfError
from pgolf.report import plots
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
