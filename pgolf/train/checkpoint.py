"""Weights and training state on disk: safetensors for tensors, JSON for everything else (no code-executing format).

* :func:`save_tensors` / :func:`load_tensors`: a tensor dict plus a JSON-able ``meta`` kept in the safetensors
  header, written atomically (temp file + rename), so a kill mid-write never leaves a torn checkpoint.
* :func:`optimizer_tensors` / :func:`load_optimizer`: a torch optimizer's ``state_dict`` split into tensors and
  a JSON part, and put back.
"""

from __future__ import annotations

import torch

RAW_FILE, META_FILE = "raw.safetensors", "meta.json"


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
