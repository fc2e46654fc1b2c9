"""bench/gpu_check.sh on a machine without CUDA: a dry run that skips every CUDA sub-check with its reason, writes
its few files and exits 0 (on a GPU the same command is the 8-minute check, not a test)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers.common import ROOT


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this is the real check (minutes), run by hand")
def test_gpu_check_is_a_clean_dry_run_on_cpu(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out), "--commit", "test"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    checks = results["checks"]
    assert list(checks) == ["environment", "kernels", "train_step", "ttt", "pytest_gpu", "muon"]
    assert checks["environment"]["status"] == "ok" and checks["environment"]["torch"] == torch.__version__
    for name in ("kernels", "train_step", "ttt", "muon"):
        assert checks[name] == {"status": "skipped", "reason": "no CUDA device (dry run)"}, name
    assert checks["pytest_gpu"]["status"] == "ok" and checks["pytest_gpu"]["returncode"] == 0
    assert results["commit"] == "test" and "gpu_check.py --out" in results["command"]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "pytest.txt", "summary.txt"]  # at most 8 files come back from a device run
    assert "skipped (no CUDA device (dry run))" in (out / "summary.txt").read_text()
