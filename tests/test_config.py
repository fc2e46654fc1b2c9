"""Strict params loading: unknown and missing keys fail naming the key path; params.yaml loads whole."""

import pytest
import yaml

from pgolf.config import ConfigError, load_section, read_params
from pgolf.data.sources import DataConfig
from pgolf.presets import SECTIONS
from pgolf.tokenizer import TokenizerConfig


def _params(tmp_path, mutate):
    params = read_params("params.yaml")
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize(("name", "model"), SECTIONS.items())
def test_repository_params_load(name, model):
    cfg = load_section(name, model)
    with pytest.raises(Exception, match="frozen"):
        setattr(cfg, next(iter(model.model_fields)), None)


def test_unknown_key_names_it(tmp_path):
    path = _params(tmp_path, lambda p: p["data"].update(doc_charz=3))
    with pytest.raises(ConfigError, match=r"params.yaml: data\.doc_charz: unknown key"):
        load_section("data", DataConfig, path)


def test_unknown_nested_key_names_full_path(tmp_path):
    path = _params(tmp_path, lambda p: p["data"]["hub"].update(mirorr="x"))
    with pytest.raises(ConfigError, match=r"data\.hub\.mirorr: unknown key"):
        load_section("data", DataConfig, path)


def test_missing_key_names_it(tmp_path):
    path = _params(tmp_path, lambda p: p["tokenizer"].pop("vocab_size"))
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size: missing key"):
        load_section("tokenizer", TokenizerConfig, path)


def test_wrong_type_and_choice_are_rejected(tmp_path):
    path = _params(tmp_path, lambda p: p["tokenizer"].update(vocab_size="1024"))
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size: .*'1024'"):
        load_section("tokenizer", TokenizerConfig, path)
    path = _params(tmp_path, lambda p: p["data"].update(source="wikipedia"))
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_section("data", DataConfig, path)


def test_missing_section_and_file(tmp_path):
    path = _params(tmp_path, lambda p: p.pop("data"))
    with pytest.raises(ConfigError, match="missing section 'data'"):
        load_section("data", DataConfig, path)
    with pytest.raises(ConfigError, match="not found"):
        load_section("data", DataConfig, tmp_path / "nope.yaml")
