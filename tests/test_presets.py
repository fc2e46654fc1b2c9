"""Presets: every one validates, applying one rewrites params.yaml so DVC sees the change, and the record's preset
gives the record's parameter count and byte budget arithmetic (the record's README)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgolf.config import ConfigError, read_params
from pgolf.model.gpt import GPT
from pgolf.params import SECTIONS
from pgolf.presets import apply, available, check
from pgolf.quant.policy import decide

ROOT = Path(__file__).resolve().parents[1]
PRESETS = available(ROOT / "presets")
SEEDS = ("record_1855", "pr1492", "pr1802", "pr2143", "pr374")


def test_every_seed_has_a_preset_and_a_cpu_twin():
    names = {str(p.relative_to(ROOT / "presets")) for p in PRESETS}
    assert {f"{s}.yaml" for s in SEEDS} | {f"cpu/{s}.yaml" for s in SEEDS} <= names


@pytest.mark.parametrize("preset", PRESETS, ids=[str(p.relative_to(ROOT / "presets")) for p in PRESETS])
def test_presets_hold_every_section_and_validate(preset):
    assert set(read_params(preset)) == set(read_params(ROOT / "params.yaml")) == set(SECTIONS)
    check(preset)


def test_generated_presets_are_up_to_date(tmp_path):
    copy = tmp_path / "presets"
    shutil.copytree(ROOT / "presets", copy)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    subprocess.run([sys.executable, str(copy / "make_presets.py")], check=True)
    for path in available(copy):
        assert path.read_text() == (ROOT / "presets" / path.relative_to(copy)).read_text(), path


def test_apply_replaces_params_and_refuses_a_bad_preset(tmp_path):
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    apply(ROOT / "presets" / "pr1492.yaml", params)
    assert read_params(params)["model"]["parallel_mode"] == "gptj"
    bad = read_params(ROOT / "presets" / "pr374.yaml")
    bad["model"]["bigram_hash_buckets"] = 3
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match="model.bigram_hash_buckets: unknown key"):
        apply(tmp_path / "bad.yaml", params)
    assert read_params(params)["model"]["parallel_mode"] == "gptj"  # untouched


def _record_model() -> GPT:
    sections = check(ROOT / "presets" / "record_1855.yaml")
    tok = sections["tokenizer"]
    return GPT(sections["model"].resolve(tok.vocab_size, tok.special_ids.bos)), sections["quantize"]


def test_record_preset_gives_the_record_parameter_count_and_byte_arithmetic():
    model, qcfg = _record_model()
    assert sum(p.numel() for p in model.parameters()) == 35_945_671
    params = dict(model.named_parameters())
    by_bits: dict[int, int] = {}
    rows = gate = gate_rows = passthrough = 0
    for name, d in decide(model, qcfg).items():
        n = params[name].numel()
        if d.spec is not None:
            by_bits[d.spec.bits] = by_bits.get(d.spec.bits, 0) + n
            rows += params[name].shape[0]
        elif d.kind == "gate":
            gate, gate_rows = gate + n, gate_rows + params[name].shape[0]
        else:
            passthrough += n
    assert by_bits == {6: 31_719_424, 7: 4_194_304}  # int6 q bytes, int7 q bytes (one int8 container each)
    assert rows * 2 == 106_496  # fp16 row scales
    assert passthrough * 2 == 61_774  # fp16 passthrough
    assert (gate, gate_rows) == (1_056, 88)  # int8 gate values and their fp16 row scales
    raw = sum(by_bits.values()) + rows * 2 + passthrough * 2 + gate + gate_rows * 2
    # order-0 entropy of SDClip'd int6/int7 (H ~ b - log2(k) + const) is what makes 36 MB of int8
    # containers fit: the record's per-group total was 15,865,260 B + 31,999 B of code = 15,897,259 < 16,000,000.
    assert (
        raw == 31_719_424 + 4_194_304 + 106_496 + 61_774 + 1_056 + 88 * 2
    )  # the record README's figures and 15_865_260 + 31_999 == 15_897_259 < 16_000_000
