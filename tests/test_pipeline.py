"""The pipeline's wiring: dvc.yaml lists exactly what each stage reads; house rules; the stages end to end."""

import ast
import copy
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import needs_sotu

from pgolf.compress.bundle import bundle_files, import_closure, module_file
from pgolf.config import read_params

pytestmark = needs_sotu  # the stages run on the embedded corpus

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _module_file(name: str) -> Path | None:
    return module_file(ROOT, name)


def _closure(script: Path) -> set[str]:
    files = import_closure(ROOT, [str(script.relative_to(ROOT))])
    return {str(f.relative_to(ROOT)) for f in files if f.name != "__init__.py"}


def _script(stage: dict) -> Path:
    module = re.search(r"-m (stages\.\w+)", stage["cmd"]).group(1)
    return _module_file(module)


@pytest.mark.parametrize("name", STAGES)
def test_stage_deps_are_exactly_the_modules_it_imports(name):
    stage = STAGES[name]
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
    users = {name for name, stage in STAGES.items() if "pgolf/train/loader.py" in stage["deps"]}
    assert users == {"train", "bundle"}
    for low in ("pgolf/segments.py", "pgolf/tensorio.py", "pgolf/score/scorer.py", "pgolf/artifacts.py"):
        assert "bundle" in {name for name, stage in STAGES.items() if low in stage["deps"]}, low


@pytest.mark.parametrize("name", STAGES)
def test_stage_params_are_exactly_the_sections_it_loads(name):
    tree = ast.parse(_script(STAGES[name]).read_text())
    loaded = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "load_section"
    }
    assert loaded == set(STAGES[name]["params"])
    assert loaded <= set(read_params(ROOT / "params.yaml"))


def test_training_and_evaluation_run_under_the_launcher():
    """Phased TTT over 50,000 documents on one GPU of eight would take 8x the record's evaluation time."""
    for name in ("train", "evaluate"):
        assert STAGES[name]["cmd"].startswith(f"${{train.launcher}} -m stages.{name}"), name


def test_environment_is_read_only_in_dist():
    offenders = [
        str(p.relative_to(ROOT))
        for p in [*ROOT.glob("pgolf/**/*.py"), *ROOT.glob("stages/*.py")]
        if p.name != "dist.py" and re.search(r"os\.environ|getenv\(", p.read_text())
    ]
    assert not offenders


def test_nothing_loads_with_pickle():
    for p in [*ROOT.glob("pgolf/**/*.py"), *ROOT.glob("stages/*.py")]:
        text = p.read_text()
        assert "import pickle" not in text and not re.search(r"torch\.load\((?![^)]*weights_only=True)", text), p


def test_stage_scripts_stay_thin():
    for p in ROOT.glob("stages/*.py"):
        assert len(p.read_text().splitlines()) <= 200, p


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


def test_unknown_params_key_stops_a_stage(tmp_path):
    params = read_params(ROOT / "params.yaml")
    params["tokenizer"]["vocab"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.tokenizer", "--params", tmp_path / "params.yaml", "--out", tmp_path / "t"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "tokenizer.vocab: unknown key" in result.stderr


def _leaves(tree: dict, prefix: tuple = ()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, list):
        return [*value, "x"]
    return f"{value}x"


def _set(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def _run_cache_key(stage: dict, params: dict) -> str:
    """DVC's run-cache key of a stage (dvc.stage.cache), from a lock entry as DVC writes it."""
    from dvc.stage.cache import _get_cache_hash

    lock = {"cmd": stage["cmd"], "deps": [{"path": d, "md5": "0" * 32} for d in stage["deps"]],
            "params": {"params.yaml": {s: copy.deepcopy(params[s]) for s in stage["params"]}},
            "outs": [{"path": next(iter(o)) if isinstance(o, dict) else o} for o in stage.get("outs", [])]}  # fmt: skip
    return _get_cache_hash(lock, key=True)


@pytest.mark.parametrize("name", STAGES)
def test_every_params_key_changes_its_stages_run_cache_key(name):
    """DVC drops every key named ``size`` or ``nfiles``, at any depth, from the hashes it computes
    (treeverse/dvc#10296): a params key of that name would never re-run its stage. Every leaf of every section a
    stage reads must change the stage's run-cache key."""
    pytest.importorskip("dvc")
    params, stage = read_params(ROOT / "params.yaml"), STAGES[name]
    base = _run_cache_key(stage, params)
    for section in stage["params"]:
        for path, value in _leaves(params[section]):
            changed = copy.deepcopy(params)
            _set(changed[section], path, _changed(value))
            assert _run_cache_key(stage, changed) != base, f"{section}.{'.'.join(map(str, path))} is invisible to DVC"


def test_a_section_named_size_would_be_invisible_to_dvc():
    """Why the size stage's section is called ``artifact``: the check above is able to fail."""
    pytest.importorskip("dvc")
    stage = {**STAGES["size"], "params": ["size"]}
    before = {"size": {"limit_bytes": 16_000_000, "enforce": True}}
    after = {"size": {"limit_bytes": 400_000, "enforce": False}}
    assert _run_cache_key(stage, before) == _run_cache_key(stage, after)


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_can_use_the_run_cache(name):
    """DVC restores a stage from its run cache (a queued experiment, a fresh clone sharing the cache, a setting
    tried before) only when the run was saved there and can be restored: dvc.stage.cache._can_hash holds (no
    ``persist`` output, not always changed), and Stage.run saves it only when every output is cached or a metric or
    a plot. The dvclive curves had ``persist`` (for resume: they now travel with the resume checkpoint, see
    test_train.py::test_kill_and_resume_gives_the_same_weights_and_curves) and the stages' metrics files were
    uncached plain outputs: either one made every queued experiment of a new configuration retrain."""
    pytest.importorskip("dvc")
    from dvc.repo import Repo
    from dvc.stage.cache import _can_hash

    with Repo(str(ROOT)) as repo:
        stage = next(s for s in repo.index.stages if s.name == name)
        for dep in stage.deps:  # the deps' hashes need the data; _can_hash only asks that one exists
            dep.get_hash = lambda: "0" * 32
        assert _can_hash(stage), [o.def_path for o in stage.outs if o.persist]
        uncached = [o.def_path for o in stage.outs if not o.use_cache and not (o.is_metric or o.is_plot)]
        assert not uncached, f"{uncached}: cache: false outside metrics/plots, so Stage.run skips the run cache"
