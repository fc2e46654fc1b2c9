"""pgolf.report.lineage: every preset and params.yaml gets a table in pipeline order; turning a knob on adds exactly
its row and off removes it; every PR a lineage cell cites is written in the repository's own params.yaml, presets/*.yaml
or presets/make_presets.py (and, where the shared notes are present, in them too)."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

from pgolf.report.lineage import HEADER, NONE, STAGES, TECHNIQUES, get, technique_table

ROOT = Path(__file__).resolve().parents[2]
PRESETS = sorted((ROOT / "presets").glob("*.yaml")) + sorted((ROOT / "presets" / "cpu").glob("*.yaml"))
PARAMS_FILES = [ROOT / "params.yaml", *PRESETS]
REPO_SOURCES = [*PARAMS_FILES, ROOT / "presets" / "make_presets.py"]
SHARED = Path("/work/shared")  # the specs and seed cards; absent in CI
NOTES = sorted((SHARED / "spec").glob("*.md")) + sorted((SHARED / "seeds").glob("*.txt"))
LINEAGE = re.compile(r"#\d+(, #\d+)*( \(record\))?")


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / name).read_text())


def assign(params: dict, key: str, value: object) -> dict:
    """A copy of ``params`` with the dotted ``key`` set to ``value``."""
    out = copy.deepcopy(params)
    *path, leaf = key.split(".")
    node = out
    for part in path:
        node = node[part]
    assert leaf in node, key
    node[leaf] = value
    return out


def rows(table: str) -> list[str]:
    return table.splitlines()[2:]


def names(table: str) -> list[str]:
    return [row.split(" | ")[0].removeprefix("| ") for row in rows(table)]


def cited(paths: list[Path]) -> set[str]:
    return {number for path in paths for number in re.findall(r"#(\d+)", path.read_text())}


@pytest.mark.parametrize("path", PARAMS_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_preset_gets_a_table_in_pipeline_order(path):
    table = technique_table(yaml.safe_load(path.read_text()))
    assert table.startswith(HEADER + "\n") and rows(table)
    assert all(row.startswith("| ") and row.endswith(" |") and row.count(" | ") == 2 for row in rows(table))
    order = [t.name for t in TECHNIQUES]
    positions = [order.index(name) for name in names(table)]
    assert positions == sorted(positions)


@pytest.mark.parametrize(
    ("preset", "present", "absent"),
    [
        ("presets/record_1855.yaml", ["LQER", "Phased LoRA TTT", "SmearGate, BOS-masked", "Per-role streams"],
         ["Sliding-window eval", "Token-only n-gram tilt", "Late QAT", "Muon, classic Newton–Schulz"]),
        ("presets/pr374.yaml", ["Late QAT", "BigramHash embedding", "Tight SWA", "Round-to-nearest quantization"],
         ["Depth recurrence", "LQER", "EMA weights", "GPTQ with SDClip"]),
        ("presets/frontier_2135.yaml", ["Token-only n-gram tilt", "AsymLogit rescale", "TTT without K LoRA"],
         ["Chunk SGD TTT", "Multi-phase global TTT"]),
        ("presets/pr2143.yaml", ["Hadamard rotation", "int5 matrices", "Parallel residuals, GPT-J"],
         ["Parallel residuals, two lanes", "int8 attention gates"]),
    ],
    ids=["record", "pr374", "frontier", "pr2143"],
)  # fmt: skip
def test_a_preset_lists_its_own_techniques(preset, present, absent):
    shown = names(technique_table(load(preset)))
    assert set(present) <= set(shown) and not set(absent) & set(shown)


def test_a_row_shows_the_keys_that_turn_it_on():
    table = technique_table(load("presets/record_1855.yaml"))
    assert "| LQER | quantize.lqer: rank=4, top_k=3, mode=asym, group=64 | #1855 (record) |" in rows(table)
    assert "| EMA weights | train.averaging: kind=ema, ema_decay=0.9965 | #1492, #1855 (record) |" in rows(table)


@pytest.mark.parametrize(
    ("preset", "key", "off", "on", "name"),
    [
        ("presets/record_1855.yaml", "quantize.lqer.enabled", False, True, "LQER"),
        ("presets/frontier_2135.yaml", "eval.lora_ttt.ngram_tilt.enabled", False, True, "Token-only n-gram tilt"),
        ("presets/record_1855.yaml", "eval.sliding.enabled", False, True, "Sliding-window eval"),
        ("presets/pr374.yaml", "train.qat.enabled", False, True, "Late QAT"),
        ("presets/record_1855.yaml", "quantize.hadamard", False, True, "Hadamard rotation"),
        ("presets/record_1855.yaml", "quantize.awq.enabled", False, True, "AWQ-lite"),
        ("presets/record_1855.yaml", "eval.lora_ttt.asym_logit", False, True, "AsymLogit rescale"),
        ("presets/record_1855.yaml", "train.seq_schedule", [], [{"seq_len": 2048, "until": 1.0}],
         "Progressive sequence length"),
        ("presets/record_1855.yaml", "model.parallel_mode", "none", "gptj", "Parallel residuals, GPT-J"),
    ],
    ids=["lqer", "ngram-tilt", "sliding", "qat", "hadamard", "awq", "asym-logit", "seq-schedule", "gptj"],
)  # fmt: skip
def test_a_switch_adds_or_removes_exactly_its_row(preset, key, off, on, name):
    params = load(preset)
    table_off, table_on = technique_table(assign(params, key, off)), technique_table(assign(params, key, on))
    assert name not in names(table_off)
    added = [row for row in rows(table_on) if row.startswith(f"| {name} |")]
    assert len(added) == 1
    assert [row for row in rows(table_on) if row not in added] == rows(table_off)


def test_a_ttt_knob_adds_no_row_when_the_lora_ttt_does_not_run():
    params = assign(load("presets/pr1492.yaml"), "eval.lora_ttt.ngram_tilt.enabled", True)
    assert "Token-only n-gram tilt" not in names(technique_table(params))


def test_techniques_are_declared_in_pipeline_order_with_unique_names():
    stages = [STAGES.index(t.stage) for t in TECHNIQUES]
    assert stages == sorted(stages)
    assert len({t.name for t in TECHNIQUES}) == len(TECHNIQUES)


def test_every_cited_pr_is_written_in_the_repository_and_the_notes():
    in_repo = cited(REPO_SOURCES)
    in_notes = cited(NOTES) if NOTES else in_repo  # without /work/shared: the repository's files only
    for technique in TECHNIQUES:
        cell = technique.lineage
        assert cell == NONE or LINEAGE.fullmatch(cell), (technique.name, cell)
        assert "(record)" not in cell or cell.endswith("#1855 (record)"), (technique.name, cell)
        numbers = set(re.findall(r"#(\d+)", cell))
        assert numbers <= in_repo and numbers <= in_notes, (technique.name, numbers - (in_repo & in_notes))


def test_a_missing_key_names_it_and_a_knob_the_params_lack_is_off():
    """get() names the key; a run of an older pgolf, whose params lack a knob, gets a table without its row."""
    params = load("params.yaml")
    params["eval"]["lora_ttt"]["asym_logit"] = True
    assert "AsymLogit" in technique_table(params)
    del params["eval"]["lora_ttt"]["asym_logit"]
    with pytest.raises(KeyError, match="eval.lora_ttt.asym_logit"):
        get(params, "eval.lora_ttt.asym_logit")
    assert "AsymLogit" not in technique_table(params)
