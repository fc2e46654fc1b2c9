"""The params section builders. Each starts from the repository's params.yaml (the record's model from
presets/record_1855.yaml), merges the tests' fixed small values, then the call's overrides, and validates the result
with the section's model, so a new params key needs no edit here.

Overrides merge deeply: a nested mapping merges key by key, a list or a scalar replaces. Errors carry
``params.yaml: <section>.<key>`` as :func:`pgolf.config.parse_section` writes them.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from pgolf.config import parse_section, read_params
from pgolf.model.config import ModelConfig
from pgolf.params import section_model
from tests.helpers.common import ROOT

PARAMS = ROOT / "params.yaml"
RECORD_PRESET = ROOT / "presets" / "record_1855.yaml"


@functools.cache
def _params_file(path: Path) -> dict[str, Any]:
    return read_params(path)


def raw_section(name: str, source: Path = PARAMS) -> dict[str, Any]:
    """A fresh copy of section ``name`` of a params file, as written."""
    return copy.deepcopy(_params_file(source)[name])


def deep_merge(base: dict, overrides: dict) -> dict:
    """``base`` with ``overrides`` on top: nested mappings merge key by key, lists and scalars replace."""
    merged = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def build(name: str, *layers: dict, source: Path = PARAMS, model: type | None = None) -> Any:
    """Section ``name`` of ``source`` with each of ``layers`` merged on in turn, validated by ``model`` (by default
    the section's model in :data:`pgolf.params.SECTIONS`)."""
    raw = raw_section(name, source)
    for layer in layers:
        raw = deep_merge(raw, layer)
    return parse_section(raw, name, model or section_model(name))


# --- the tests' small values: exactly where the tests' sections differ from params.yaml (or the record preset) ---

DATA = {"num_val_docs": 3, "variant": "sp1024", "train_shards": 1, "shard_tokens": 5000}
TOKENIZER = {"vocab_size": 512, "caseops": False}
RECORD_MODEL = {"vocab_size": 8192, "bos_id": 1, **raw_section("model", RECORD_PRESET)}
"""The record's resolved model section: the preset's, with the vocabulary and BOS of its tokenizer."""
TOY_MODEL = {"vocab_size": 64, "num_layers": 6, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2, "rope_dims": 4,
             "gate_window": 4, "parallel_start_layer": 4, "loop_start": 1, "loop_end": 2, "num_loops": 1,
             "xsa_last_n": 6}  # fmt: skip
EVAL = {
    "progress": False,
    "sliding": {"seq_len": 24, "stride": 5, "batch_windows": 4},
    "lora_ttt": {"rank": 4, "alpha": 8.0, "lr": 1e-2, "chunk_size": 6, "context": 24, "batch_docs": 3,
                 "phases": [3, 6], "global_sgd": {"lr": 1e-2, "chunk_tokens": 40, "seq_len": 24}},
    "chunk_sgd": {"chunk_tokens": 40, "seq_len": 24, "stride": 5, "batch_windows": 4, "epochs": 2, "lr": 0.05},
    "multi_phase": {"enabled": True, "seq_len": 24, "stride": 5, "batch_windows": 4, "chunk_tokens": 40, "lr": 0.05},
    "audit": {"docs": 2},
}  # fmt: skip
SCORE = {"docs": 0, "seq_len": 24, "batch_windows": 4}
TRAIN = {"max_wallclock_seconds": 0, "iterations": 8, "global_batch_tokens": 512, "micro_batch_tokens": 256,
         "seq_len": 64, "warmup_steps": 0, "log_every": 2, "val_every": 4, "checkpoint_seconds": 0,
         "muon": {"momentum_warmup_steps": 4}}  # fmt: skip


def data_cfg(**overrides):
    """The data section of a small embedded-corpus run (3 validation documents, shards of 5,000 tokens)."""
    return build("data", DATA, overrides)


def tokenizer_cfg(**overrides):
    """A 512-piece BPE tokenizer without CaseOps (``caseops=True`` turns it on)."""
    return build("tokenizer", TOKENIZER, overrides)


def model_cfg(**overrides) -> ModelConfig:
    """The record's architecture at toy size: 6 layers of width 32, vocab 64 (overrides apply on top)."""
    return parse_section(deep_merge(deep_merge(RECORD_MODEL, TOY_MODEL), overrides), "model", ModelConfig)


def eval_cfg(**overrides):
    """Small settings of every mode (windows of 24 tokens, LoRA chunks of 6, SGD chunks of 40 tokens)."""
    return build("eval", EVAL, overrides)


def score_cfg(**overrides):
    """The score section of the evaluation tests: every document, windows of 24 tokens in batches of 4."""
    return build("score", SCORE, overrides)


def train_cfg(**overrides):
    """8 steps of 512 tokens (2 micro-batches of 256) at seq_len 64, logged every 2, validated every 4."""
    return build("train", TRAIN, overrides)


def calibrate_cfg(**overrides):
    return build("calibrate", overrides)


def quantize_cfg(**overrides):
    return build("quantize", overrides)


def compress_cfg(**overrides):
    return build("compress", overrides)


def bundle_cfg(**overrides):
    return build("bundle", overrides)


def compliance_cfg(**overrides):
    return build("compliance", overrides)
