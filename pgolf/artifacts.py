"""What the model stages hand each other: the file names inside ``artifacts/``, and the one way a GPT is rebuilt
from stored tensors (the configuration stored with them, never params.yaml).

* ``artifacts/train/``: ``raw.safetensors`` (the live weights), ``ema.safetensors`` or ``swa.safetensors`` (the
  averaged shadow) and ``meta.json`` (resolved model config, steps, seconds, schedule);
* ``artifacts/export/``: ``model.safetensors`` (the chosen weights in their final dtypes, meta in the header);
* ``artifacts/calibrate/``: ``hessians.safetensors``.

The quantized tensors (``artifacts/quant/``) and ``model.bin`` (``artifacts/submission/``) are typed formats with
their own modules (:mod:`pgolf.quant.formats`, :mod:`pgolf.compress.submission`); they rebuild through
:func:`build_model` too.
"""

from __future__ import annotations

import json
from pathlib import Path

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


def build_model(model_config: dict, state: dict[str, Tensor]) -> GPT:
    """A GPT of the stored configuration holding ``state`` (parameters stay fp32: the values are copied in)."""
    model = GPT(ModelConfig.model_validate(model_config))
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
