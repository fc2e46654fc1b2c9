"""Checkpoint and resume of the training run: safetensors for tensors, JSON for everything else (no pickle).

A checkpoint (``artifacts/.resume/train/``, every ``train.checkpoint_seconds``) holds, written by rank 0, the
weights, the averager, the progress, the loader position and a copy of the dvclive curves so far, and from every
rank its own optimizer state (Muon's momentum lives on the parameter's owner rank). :func:`try_resume` restores a
run from it when its fingerprint (configs, data, world size) matches, so a killed ``dvc repro`` goes on where it
stopped. The curves travel with the checkpoint so that the train stage's outputs need not persist across DVC's
re-run (a stage with a ``persist`` output never uses DVC's run cache).
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from pgolf import dist, tensorio

if TYPE_CHECKING:
    from pgolf.train.loop import Run

OPTIMIZERS = ("muon", "embed", "scalar")
"""The names of the run's optimizers in the checkpoint, in :meth:`Optimizers.all` order."""


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


LIVE_COPY = "live"  # the curves as of the checkpoint, inside the resume directory


def _copy_dir(src: Path, dst: Path) -> None:
    """Replace ``dst`` by a copy of ``src``, copied beside it first so that a kill mid-copy leaves ``dst`` whole."""
    tmp = dst.with_name(f"{dst.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp)
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)


def save_checkpoint(run: Run, directory: Path, live_dir: Path | None = None) -> None:
    """Rank 0 writes weights, averager, progress and a copy of the curves so far (``live_dir``); every rank writes
    its own optimizer state (Muon's momentum lives on the parameter's owner rank).

    The curves travel with the checkpoint so that the train stage's outputs need not persist across DVC's re-run
    (a stage with a ``persist`` output never uses DVC's run cache: a fresh clone or a queued experiment would
    retrain instead of checking the weights out); a resumed run gets exactly the points logged up to its step."""
    tensors, info = {}, {}
    for name, opt in zip(OPTIMIZERS, run.opts.all(), strict=True):
        t, meta = optimizer_tensors(opt, name)
        tensors.update(t)
        info[name] = meta
    tensorio.save_tensors(directory / f"optim_rank{run.info.rank}.safetensors", tensors, info)
    if run.info.is_main:
        state = {f"model.{k}": v for k, v in run.model.state_dict().items()}
        averaged = run.averager.resume_state()
        state.update({f"avg.{k}": v for k, v in averaged.items() if isinstance(v, torch.Tensor)})
        extra = {k: v for k, v in averaged.items() if not isinstance(v, torch.Tensor)}
        meta = {"fingerprint": run.fingerprint, "progress": asdict(run.state), "loader": run.loader.state_dict(),
                "averager_extra": extra}  # fmt: skip
        tensorio.save_tensors(directory / "state.safetensors", state, meta)
        if live_dir is not None and live_dir.is_dir():
            _copy_dir(live_dir, directory / LIVE_COPY)
    dist.barrier()


def try_resume(run: Run, directory: Path, live_dir: Path | None = None) -> bool:
    """Restore the run from ``directory`` when a checkpoint of the same fingerprint is there, and on rank 0 the
    curves as of that checkpoint into ``live_dir`` (points logged after it are logged again by the resumed run)."""
    path = directory / "state.safetensors"
    optim_path = directory / f"optim_rank{run.info.rank}.safetensors"
    if not path.is_file() or not optim_path.is_file():
        return False
    tensors, meta = tensorio.load_tensors(path)
    if meta.get("fingerprint") != run.fingerprint:
        dist.print0(f"train: ignoring {directory}: it belongs to another configuration")
        return False
    run.model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    averaged = {k[4:]: v for k, v in tensors.items() if k.startswith("avg.")}
    run.averager.load_state_dict({**averaged, **meta["averager_extra"]})
    opt_tensors, opt_info = tensorio.load_tensors(optim_path)
    for name, opt in zip(OPTIMIZERS, run.opts.all(), strict=True):
        load_optimizer(opt, name, opt_tensors, opt_info[name])
    run.loader.load_state_dict(meta["loader"])
    run.state = type(run.state)(**meta["progress"])
    saved = directory / LIVE_COPY
    if live_dir is not None and run.info.is_main and saved.is_dir():
        _copy_dir(saved, live_dir)
    dist.print0(f"train: resumed from {directory} at step {run.state.step}")
    return True
