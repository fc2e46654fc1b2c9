"""Strict params loading: unknown and missing keys fail naming the key path; params.yaml loads whole."""

import subprocess
import sys

import pytest
import yaml

from pgolf import config
from pgolf.config import ConfigError, read_params
from pgolf.data.tokenizer import TokenizerConfig
from pgolf.params import SECTIONS, load_section, section_model


def _params(tmp_path, mutate):
    params = read_params("params.yaml")
    mutate(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.parametrize("name", SECTIONS)
def test_repository_params_load(name):
    cfg = load_section(name)
    model = section_model(name)
    assert type(cfg) is model
    with pytest.raises(Exception, match="frozen"):
        setattr(cfg, next(iter(model.model_fields)), None)


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


def test_the_registry_holds_exactly_params_yamls_sections_in_order():
    assert list(SECTIONS) == list(read_params("params.yaml"))


def test_a_stage_ends_with_its_wall_time_and_a_report_does_not(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    stage = subprocess.run([sys.executable, "-m", "stages.size", "--help"], cwd=root, capture_output=True, text=True)
    assert stage.returncode == 0 and "done in" not in stage.stdout  # --help exits before the stage runs
    script = tmp_path / "stages" / "demo.py"
    script.parent.mkdir()
    script.write_text("from pgolf.cli import run\nrun(lambda: print('working'))\n")
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True, text=True,
                         env={"PYTHONPATH": str(root), "PATH": ""}).stdout.splitlines()  # fmt: skip
    assert out[0] == "working" and out[1].startswith("demo: done in ") and out[1].endswith(" s")
    report = tmp_path / "report.py"
    report.write_text(script.read_text())
    assert "done in" not in subprocess.run([sys.executable, str(report)], cwd=root, capture_output=True, text=True,
                                           env={"PYTHONPATH": str(root), "PATH": ""}).stdout  # fmt: skip
