"""pgolf.runcard: the run card names the device and how many, the versions (None where a package is missing, nothing
imported to read them), the commit and whether the code differs from it, and the stage's wall seconds."""

import importlib.metadata
import os
import platform
import subprocess
import sys
import time

import torch

from pgolf import runcard
from pgolf.dist import DistInfo
from tests.helpers.common import ROOT


def test_the_card_names_the_devices_of_the_job_and_the_cpus():
    eight = DistInfo(rank=0, world_size=8, local_rank=0, device=torch.device("cpu"))
    card = runcard.run_card(time.perf_counter() - 5.0, eight)
    assert card["hardware"] == {"device": "cpu", "devices": 8, "cpus": os.cpu_count()}
    assert runcard.run_card(time.perf_counter())["hardware"] == {"device": "cpu", "devices": 1, "cpus": os.cpu_count()}
    assert 5.0 <= card["wall_seconds"] < 60.0
    assert set(card) == {"hardware", "versions", "commit", "dirty", "wall_seconds"}


def test_versions_come_from_the_installed_packages_and_none_where_missing(monkeypatch):
    found = runcard.versions()
    assert found["python"] == platform.python_version() and found["cuda"] == torch.version.cuda
    assert found["torch"] == importlib.metadata.version("torch")
    assert runcard.package_version("pgolf-no-such-distribution") is None
    monkeypatch.setitem(runcard.PACKAGES, "dvc", "pgolf-no-such-distribution")
    monkeypatch.setattr(runcard, "FA3_MODULE", "pgolf_no_such_module")
    assert runcard.versions()["dvc"] is None and runcard.versions()["flash_attn_3"] is None
    monkeypatch.setattr(runcard, "FA3_MODULE", "json")  # an importable module without the package's metadata
    assert runcard.versions()["flash_attn_3"] == "unknown"


def test_reading_the_versions_imports_nothing():
    code = "import sys, pgolf.runcard as r; r.versions(); print([m for m in ('triton', 'dvc') if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def _git(path, *args):
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=path, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


def test_the_commit_and_whether_the_code_differs_from_it(tmp_path, monkeypatch):
    for name in ("pgolf/a.py", "stages/s.py", "params.yaml"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", "-A")
    _git(tmp_path, "commit", "-qm", "code")
    monkeypatch.setattr(runcard, "ROOT", tmp_path.resolve())
    assert runcard.code_version() == _git(tmp_path, "rev-parse", "HEAD") and runcard.code_dirty() is False
    (tmp_path / "params.yaml").write_text("x = 2\n")  # params are DVC's to track, not code
    assert runcard.code_dirty() is False
    (tmp_path / "stages/new.py").write_text("")  # an untracked module is code
    assert runcard.code_dirty() is True
    (tmp_path / "stages/new.py").unlink()
    (tmp_path / "pgolf/a.py").write_text("x = 2\n")
    assert runcard.code_dirty() is True


def test_outside_a_checkout_of_its_own_the_commit_is_unknown(tmp_path, monkeypatch):
    monkeypatch.setattr(runcard, "ROOT", tmp_path.resolve())
    assert (runcard.code_version(), runcard.code_dirty()) == ("unknown", "unknown")
    _git(tmp_path, "init", "-q")
    (tmp_path / "records").mkdir()  # a records folder's pgolf/ inside another project's checkout
    monkeypatch.setattr(runcard, "ROOT", (tmp_path / "records").resolve())
    assert (runcard.code_version(), runcard.code_dirty()) == ("unknown", "unknown")
