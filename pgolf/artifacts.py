"""What the model stages hand each other: the file names inside ``artifacts/``, and the one way a GPT is rebuilt
from stored tensors (the configuration stored with them, never params.yaml).

* ``artifacts/train/``: ``raw.safetensors`` (the live weights), ``ema.safetensors`` or ``swa.safetensors`` (the
  averaged shadow) and ``meta.json`` (resolved model config, steps, seconds, schedule);
* ``artifacts/export/``: ``model.safetensors`` (the chosen weights in their final dtypes, meta in the header);
* ``artifacts/calibrate/``: ``hessians.safetensors``.

The quantized tensors (``artifacts/quant/``) and ``model.bin`` (``artifacts/submission/``) are typed formats with
their own modules (:mod:`pgolf.quant.formats`, :mod:`pgolf.compress.submission`); they rebuild through
:func:`build_model` too.

The stored model configuration is the resolved :class:`~pgolf.model.config.ModelConfig` plus, for a model trained
under ``train.dtype_policy: record``, ``embedding_dtype: bfloat16``: the record's tied embedding is a bf16
parameter in training and in every model it scores (export, the dequantized model, TTT), so its residual stream
is bf16 there too, and a dequantized embedding is rounded to bf16 on load, as the record's template does. The
key is absent for fp32 models, so their stored bytes are what they were.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor

from pgolf import tensorio
from pgolf.config import ConfigError
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import GPT

META_FILE = "meta.json"
RAW_FILE = "raw.safetensors"
MODEL_FILE = "model.safetensors"
HESSIANS_FILE = "hessians.safetensors"


def averaged_file(kind: str) -> str:
    """The file of the averaged weights kept by ``train.averaging.kind`` (ema or swa)."""
    return f"{kind}.safetensors"


EMBEDDING_DTYPE = "embedding_dtype"


def stored_config(cfg: ModelConfig, dtype_policy: str) -> dict:
    """The model configuration stored with the weights of a run under ``train.dtype_policy``."""
    return cfg.model_dump() | ({EMBEDDING_DTYPE: "bfloat16"} if dtype_policy == "record" else {})


def template(model_config: dict) -> GPT:
    """A freshly initialized GPT of a stored configuration, its embedding in the stored dtype."""
    config = dict(model_config)
    embedding = config.pop(EMBEDDING_DTYPE, "float32")
    if embedding not in ("float32", "bfloat16"):
        raise ConfigError(f"stored model config: {EMBEDDING_DTYPE} must be float32 or bfloat16 (got {embedding!r})")
    model = GPT(ModelConfig.model_validate(config))
    model.tok_emb.weight.data = model.tok_emb.weight.data.to(getattr(torch, embedding))
    return model


def build_model(model_config: dict, state: dict[str, Tensor]) -> GPT:
    """A GPT of the stored configuration holding ``state``: the values are copied into its parameters (fp32, and
    the embedding in the stored dtype)."""
    model = template(model_config)
    model.load_state_dict(state)
    return model


def read_train_meta(train_dir: Path) -> dict:
    path = Path(train_dir) / META_FILE
    if not path.is_file():
        raise tensorio.TensorFileError(f"{path}: not found; run `dvc repro train` first")
    return json.loads(path.read_text())


def load_trained(train_dir: Path, which: str) -> tuple[GPT, dict]:
    """A model holding the ``which`` weights (raw, ema or swa) of the train stage, and the train meta."""
    meta = read_train_meta(train_dir)
    if which != "raw" and which != meta["averaging"]:
        raise ConfigError(
            f"export.weights={which} but training kept {meta['averaging']} weights "
            f"(train.averaging.kind); set export.weights to raw or {meta['averaging']}"
        )
    tensors, _ = tensorio.load_tensors(Path(train_dir) / (RAW_FILE if which == "raw" else averaged_file(which)))
    return build_model(meta["model_config"], tensors), meta


def load_exported(export_dir: Path) -> tuple[GPT, dict]:
    """The exported model (fp32 parameters holding the exported values) and its meta."""
    tensors, meta = tensorio.load_tensors(Path(export_dir) / MODEL_FILE)
    return build_model(meta["model_config"], tensors), meta
