"""pgolf.config: strict params loading: unknown and missing keys fail naming the key path, the section names
of a params file are checked, a section dict is parsed alone."""

import pytest
import yaml

from pgolf import config
from pgolf.config import ConfigError, read_params
from pgolf.data.tokenizer import TokenizerConfig
from pgolf.params import SECTIONS, load_section


def _params(tmp_path, mutate):
    params = read_params("params.yaml")
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def test_unknown_key_names_it(tmp_path):
    path = _params(tmp_path, lambda p: p["data"].update(doc_charz=3))
    with pytest.raises(ConfigError, match=r"params.yaml: data\.doc_charz: unknown key"):
        load_section("data", path)


def test_unknown_nested_key_names_full_path(tmp_path):
    path = _params(tmp_path, lambda p: p["data"]["hub"].update(mirorr="x"))
    with pytest.raises(ConfigError, match=r"data\.hub\.mirorr: unknown key"):
        load_section("data", path)


def test_missing_key_names_it(tmp_path):
    path = _params(tmp_path, lambda p: p["tokenizer"].pop("vocab_size"))
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size: missing key"):
        load_section("tokenizer", path)


def test_wrong_type_and_choice_are_rejected(tmp_path):
    path = _params(tmp_path, lambda p: p["tokenizer"].update(vocab_size="1024"))
    with pytest.raises(ConfigError, match=r"tokenizer\.vocab_size: .*'1024'"):
        load_section("tokenizer", path)
    path = _params(tmp_path, lambda p: p["data"].update(source="wikipedia"))
    with pytest.raises(ConfigError, match=r"data\.source"):
        load_section("data", path)


def test_missing_section_and_file(tmp_path):
    path = _params(tmp_path, lambda p: p.pop("data"))
    with pytest.raises(ConfigError, match="missing section 'data'"):
        load_section("data", path)
    with pytest.raises(ConfigError, match="not found"):
        load_section("data", tmp_path / "nope.yaml")


def _sections_file(tmp_path, names):
    """A params file holding ``names`` as (empty) sections: the section-name check runs before any section's."""
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({name: {} for name in names}))
    return path


def test_misspelled_section_names_the_closest_known_one(tmp_path):
    path = _sections_file(tmp_path, [("qauntize" if n == "quantize" else n) for n in list(SECTIONS)])
    with pytest.raises(ConfigError) as err:
        load_section("data", path)
    assert str(err.value) == f"{path}: unknown section 'qauntize' (did you mean 'quantize'?)"


def test_unknown_and_missing_sections_are_named(tmp_path):
    path = _sections_file(tmp_path, [*list(SECTIONS)[1:], "extras"])
    with pytest.raises(ConfigError) as err:
        load_section("tokenizer", path)
    assert str(err.value).startswith(f"{path}: unknown section 'extras' (remove it; the sections are: data, ")
    assert str(err.value).endswith("; missing section 'data' (add it)")
    assert "\n" not in str(err.value)
    path = _sections_file(tmp_path, ["size" if n == "artifact" else n for n in list(SECTIONS)])
    with pytest.raises(ConfigError, match=r"unknown section 'size' \(renamed 'artifact'\)$"):
        load_section("data", path)


def test_a_section_dict_is_parsed_without_the_file_check():
    raw = read_params("params.yaml")["tokenizer"]
    assert config.parse_section(raw, "tokenizer", TokenizerConfig).vocab_size == raw["vocab_size"]
