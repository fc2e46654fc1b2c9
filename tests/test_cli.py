"""pgolf.cli: a stage ends with its wall time, a report does not."""

import subprocess
import sys


def test_a_stage_ends_with_its_wall_time_and_a_report_does_not(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stage = subprocess.run([sys.executable, "-m", "stages.size", "--help"], cwd=root, capture_output=True, text=True)
    assert stage.returncode == 0 and "done in" not in stage.stdout  # --help exits before the stage runs
    script = tmp_path / "stages" / "demo.py"
    script.parent.mkdir()
    script.write_text("from pgolf.cli import run\nrun(lambda: print('working'))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""}).stdout.splitlines()  # fmt: skip
    assert out[0] == "working" and out[1].startswith("demo: done in ") and out[1].endswith(" s")
    report = tmp_path / "report.py"
    report.write_text(script.read_text())
    assert "done in" not in subprocess.run([sys.executable, str(report)], cwd=root, capture_output=True, text=True,
                                           env={"PYTHONPATH": str(root), "PATH": ""}).stdout  # fmt: skip
