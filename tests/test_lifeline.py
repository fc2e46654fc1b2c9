"""A stage dies with the DVC process that started it (pgolf.lifeline): killed -9, DVC takes the stage, the shell
between them and the stage's own children (lrzip) with it, and the stage writes nothing afterwards; a stage started
by hand is not bound."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from pgolf import lifeline

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")


def _alive(pid: int) -> bool:
    stat = lifeline._stat(pid)
    return stat is not None and Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"


def _fake_dvc(tmp_path: Path, command: str) -> Path:
    """An executable named ``dvc`` that runs ``command`` as DVC runs a stage (``$SHELL -c``) and waits for it."""
    script = tmp_path / "bin" / "dvc"
    script.parent.mkdir()
    script.write_text(f"#!{sys.executable}\nimport subprocess, sys\n"
                      f"sys.exit(subprocess.call(['bash', '--noprofile', '--norc', '-c', {command!r}]))\n")  # fmt: skip
    script.chmod(0o755)
    return script


def _wait_for(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_a_killed_dvc_takes_its_stage_the_shell_between_and_the_stages_children(tmp_path):
    """bash keeps itself as the parent here (two commands), so the stage watches bash and DVC above it."""
    pids = tmp_path / "pids"
    child = textwrap.dedent(f"""
        import os, subprocess, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pgolf import lifeline
        assert lifeline.die_with_parent(poll=0.1)
        sleeper = subprocess.Popen(lifeline.guarded(["sleep", "60"]))
        open({str(pids)!r}, "w").write(f"{{os.getpid()}} {{sleeper.pid}}")
        sleeper.wait()
        open({str(tmp_path / "written")!r}, "w").write("after")
    """)
    (tmp_path / "stage.py").write_text(child)
    dvc = subprocess.Popen([str(_fake_dvc(tmp_path, f"{sys.executable} {tmp_path / 'stage.py'}; true"))])
    assert _wait_for(lambda: pids.is_file() and pids.read_text().strip(), 30), "the stage did not start"
    stage, sleeper = map(int, pids.read_text().split())
    assert _alive(stage) and _alive(sleeper)
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    assert _wait_for(lambda: not _alive(stage) and not _alive(sleeper), 5), "the stage or its child outlived DVC"
    time.sleep(0.5)
    assert not (tmp_path / "written").exists()


def test_a_killed_dvc_takes_a_training_stage_before_it_writes(tmp_path, built):
    """``python -m stages.train`` on a run of a million steps, started as DVC starts it; once it trains, DVC is
    killed: the stage is gone within seconds and neither its weights nor its metrics ever appear."""
    _, tokenizer, shards = built
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["train"].update(iterations=1_000_000, val_every=0, checkpoint_seconds=0, warmup_steps=0)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out, metrics = tmp_path / "train", tmp_path / "train.json"
    cmd = (f"cd {ROOT} && exec {sys.executable} -m stages.train --params {tmp_path / 'params.yaml'} --shards {shards} "
           f"--tokenizer {tokenizer} --out {out} --resume {tmp_path / 'resume'} --live {tmp_path / 'live'} "
           f"--metrics {metrics}")  # fmt: skip
    with open(tmp_path / "log", "w") as log:
        dvc = subprocess.Popen([str(_fake_dvc(tmp_path, cmd))], stdout=log, stderr=subprocess.STDOUT)
    stage = None

    def training() -> bool:
        nonlocal stage
        kids = Path(f"/proc/{dvc.pid}/task/{dvc.pid}/children")
        pids = kids.read_text().split() if kids.is_file() else []
        stage = int(pids[0]) if pids else stage
        return stage is not None and "loss=" in (tmp_path / "log").read_text()

    try:
        assert _wait_for(training, 60), (tmp_path / "log").read_text()[-2000:]
        os.kill(dvc.pid, signal.SIGKILL)
        dvc.wait()
        assert _wait_for(lambda: not _alive(stage), 5), "the stage outlived DVC"
        assert not out.exists() and not metrics.exists()
    finally:
        if stage is not None and _alive(stage):
            os.kill(stage, signal.SIGKILL)


def test_a_stage_started_by_hand_is_not_bound():
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT)!r}); from pgolf import lifeline; print(lifeline.die_with_parent())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_lrzip_runs_under_the_parent_death_signal():
    assert lifeline.guarded(["lrzip", "-d"])[-2:] == ["lrzip", "-d"]
    if lifeline._linux() and lifeline.shutil.which("setpriv"):
        assert lifeline.guarded(["lrzip"])[1:4] == ["--pdeathsig", "KILL", "--"]
