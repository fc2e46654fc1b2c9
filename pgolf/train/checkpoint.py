"""Weights and training state on disk: safetensors for tensors, JSON for everything else (no code-executing format).

* :func:`save_tensors` / :func:`load_tensors`: a tensor dict plus a JSON-able ``meta`` kept in the safetensors
  header, written atomically (temp file + rename), so a kill mid-write never leaves a torn checkpoint.
* :func:`optimizer_tensors` / :func:`load_optimizer`: a torch optimizer's ``state_dict`` split into tensors and
  a JSON part, and put back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from pgolf.errors import PgolfError

META_KEY = "pgolf"
RAW_FILE, META_FILE = "raw.safetensors", "meta.json"


class CheckpointError(PgolfError, ValueError):
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
        raise CheckpointError(f"{path}: not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file ({err}); delete it and re-run") from err
    return tensors, json.loads(header.get(META_KEY, "{}"))


def optimizer_tensors(opt: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``opt.state_dict()`` into ``{prefix.idx.key: tensor}`` and a JSON-able remainder."""
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{idx}.{key}"] = value
            else:
                scalars.setdefault(str(idx), {})[key] = value
    return tensors, {"scalars": scalars, "param_groups": state["param_groups"]}


def load_optimizer(opt: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], info: dict) -> None:
    state: dict[int, dict] = {int(i): dict(v) for i, v in info["scalars"].items()}
    for name, value in tensors.items():
        head, idx, key = name.split(".", 2)
        if head == prefix:
            state.setdefault(int(idx), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
