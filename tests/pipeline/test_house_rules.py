"""House rules of the code the pipeline runs: only pgolf.dist reads the environment, nothing loads with pickle, the
stage scripts stay thin."""

import re

from tests.helpers.common import ROOT
from tests.helpers.data import needs_sotu

pytestmark = needs_sotu  # the stages run on the embedded corpus (the guard of its former file, tests/test_pipeline.py)


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
