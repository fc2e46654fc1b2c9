"""pgolf.params: the registry of sections holds params.yaml's, in order, and every section of params.yaml
loads into its model."""

import pytest

from pgolf.config import read_params
from pgolf.params import SECTIONS, load_section, section_model


@pytest.mark.parametrize("name", SECTIONS)
def test_repository_params_load(name):
    cfg = load_section(name)
    model = section_model(name)
    assert type(cfg) is model
    with pytest.raises(Exception, match="frozen"):
        setattr(cfg, next(iter(model.model_fields)), None)


def test_the_registry_holds_exactly_params_yamls_sections_in_order():
    assert list(SECTIONS) == list(read_params("params.yaml"))
