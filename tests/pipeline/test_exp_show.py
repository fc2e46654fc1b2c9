"""``python -m pgolf.report.exps`` in a real git + DVC repository (the experiment table of `dvc exp show`)."""

import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.report import exps
from tests.helpers.report import table_cells

SUMMARIZE = """\
import json, yaml
p = yaml.safe_load(open("params.yaml"))
bpb = 1.6 + p["train"]["lr"] / 10
ladder = {"prequant_raw": bpb, "model_bin": bpb + 0.01}
ladder.update({"lora_ttt": bpb - 0.005} if p["eval"]["ttt"] else {})
json.dump({"ladder": ladder, "bytes": {"total": 1234567, "fits": True}, "compliance": {"compliant": True}},
          open("metrics/headline.json", "w"))
"""


DVC_YAML = """\
stages:
  summary:
    cmd: python summarize.py
    deps: [summarize.py]
    params: [train, eval]
    metrics:
    - metrics/headline.json:
        cache: false
"""


def _scratch_repo(path: Path) -> None:
    """A git + DVC repo with one stage writing metrics/headline.json, its baseline and two experiments."""
    env = {"DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(path)}
    run = lambda *a: subprocess.run(a, cwd=path, check=True, capture_output=True, env=env)  # noqa: E731
    dvc = (sys.executable, "-m", "dvc")
    run("git", "init", "-q")
    run("git", "config", "user.name", "t")
    run("git", "config", "user.email", "t@t")
    run(*dvc, "init", "-q")
    (path / "params.yaml").write_text("train:\n  lr: 0.1\n  seed: 1\neval:\n  ttt: false\n")
    (path / "summarize.py").write_text(SUMMARIZE)
    (path / "dvc.yaml").write_text(DVC_YAML)
    (path / "metrics").mkdir()
    run(*dvc, "repro", "-q")
    run("git", "add", "-A")
    run("git", "commit", "-qm", "baseline")
    run(*dvc, "exp", "run", "-q", "-S", "train.lr=0.2", "-n", "lr-up")
    run(*dvc, "exp", "run", "-q", "-S", "eval.ttt=true", "-n", "with-ttt")


@pytest.mark.slow
def test_command_in_a_real_repo(tmp_path):
    """``python -m pgolf.report.exps`` in a fresh git + DVC repo (about 15 s: the repo, then dvc exp show twice)."""
    _scratch_repo(tmp_path)
    env = {"PYTHONPATH": str(Path(exps.__file__).parents[2]), "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin"}
    cmd = [sys.executable, "-m", "pgolf.report.exps"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env, check=True).stdout
    assert out.splitlines()[0].split() == ["experiment", "raw", "bin", "ttt", "bytes", "fits", "ok", "train.lr",
                                           "eval.ttt"]  # fmt: skip
    cells = table_cells(out, ["workspace", "master", "├─ with-ttt", "└─ lr-up"])
    assert cells["master"] == ["1.6100", "1.6200", "-", "1,234,567", "yes", "yes", "0.1", "false"]
    assert cells["└─ lr-up"] == ["1.6200", "1.6300", "-", "1,234,567", "yes", "yes", "0.2", "false"]
    assert cells["├─ with-ttt"][2] == "1.6150" and cells["├─ with-ttt"][-1] == "true"
    assert list(cells) == ["workspace", "master", "├─ with-ttt", "└─ lr-up"]  # newest experiment first, as dvc
    bad = subprocess.run([*cmd, "--rev", "nope"], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "unknown Git revision 'nope'" in bad.stderr and not bad.stdout
