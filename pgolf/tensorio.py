"""Tensor files: safetensors for the tensors, a JSON ``meta`` in the safetensors header (no code-executing format),
written atomically (temp file + rename), so a kill mid-write never leaves a torn file; and the one name <-> dtype
map that every manifest (export meta, quantized formats, the container layout) uses.

Every stage that reads or writes weights goes through here: checkpoints, exported weights, Hessians, quantized
tensors.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from pgolf.errors import PgolfError

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "int8": torch.int8,
}
"""Manifest dtype names (the float ones are also the ``export.dtype`` values)."""


def dtype_name(dtype: torch.dtype) -> str:
    """The manifest name of a dtype (inverse of :data:`DTYPES`)."""
    for name, value in DTYPES.items():
        if value == dtype:
            return name
    raise ValueError(f"unsupported dtype {dtype}; expected one of {sorted(DTYPES)}")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a manifest dtype name."""
    if name not in DTYPES:
        raise ValueError(f"unknown dtype name {name!r}; expected one of {sorted(DTYPES)}")
    return DTYPES[name]


META_KEY = "pgolf"


class TensorFileError(PgolfError, ValueError):
    """A weights or state file that cannot be read back."""


def save_tensors(path: Path | str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(cpu, str(tmp), metadata={META_KEY: json.dumps(meta)})
    os.replace(tmp, path)


def load_tensors(path: Path | str) -> tuple[dict[str, torch.Tensor], dict]:
    path = Path(path)
    if not path.is_file():
        raise TensorFileError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise TensorFileError(f"{path}: not a readable safetensors file ({err}); delete it and re-run") from err
    return tensors, json.loads(header.get(META_KEY, "{}"))
