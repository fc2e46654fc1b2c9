"""The size stage enforces the limit after writing its metrics."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import read_params
from tests.helpers.common import COMPRESS_EXTRAS, ROOT, needs

pytestmark = needs(*COMPRESS_EXTRAS)  # the ans and zstd codecs, minify


def _size_stage(tmp_path: Path, submission_dir: Path, limit: int, enforce: bool) -> tuple[int, str, dict]:
    params = read_params(ROOT / "params.yaml")
    params["artifact"] = {"limit_bytes": limit, "enforce": enforce}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = tmp_path / "size.json"
    cmd = [sys.executable, "-m", "stages.size", "--params", tmp_path / "params.yaml", "--submission",
           submission_dir, "--metrics", metrics]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return result.returncode, result.stderr, json.loads(metrics.read_text())


@pytest.mark.slow
def test_size_stage_fails_over_the_limit_after_writing_its_metrics(submission_dir, tmp_path):
    total = sum(p.stat().st_size for p in submission_dir.iterdir())
    code, err, metrics = _size_stage(tmp_path, submission_dir, total - 1, enforce=True)
    assert code == 1 and "1 over the" in err and "largest streams: group:" in err
    assert metrics["total_bytes"] == total and metrics["fits"] is False and metrics["margin_bytes"] == -1
    code, _, metrics = _size_stage(tmp_path, submission_dir, total - 1, enforce=False)
    assert code == 0 and metrics["fits"] is False
    code, _, metrics = _size_stage(tmp_path, submission_dir, total, enforce=True)
    assert code == 0 and metrics["fits"] is True and metrics["margin_bytes"] == 0
    assert metrics["model_bytes"] + metrics["code_bytes"] == total
    assert metrics["run"]["hardware"]["device"] == "cpu" and metrics["run"]["wall_seconds"] >= 0  # its run card
