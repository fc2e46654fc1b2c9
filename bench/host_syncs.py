"""Host synchronizations per training step: every call from pgolf's own code that makes the host wait for the
device (``Tensor.item``, ``tolist``, ``cpu``, ``numpy``, ``float()``, ``int()``, ``bool()`` of a tensor) during
:func:`pgolf.train.loop.train`, divided by the steps, on 1 process and on 2 gloo ranks (the record: one per step,
the all-reduced stop flag). On a CPU nothing waits for real; the count says how many such points a CUDA run would
have. torch's own calls (e.g. AdamW reading its CPU step counter) are not counted.

    python bench/host_syncs.py                      # this checkout
    python bench/host_syncs.py --root ../old        # another checkout of pgolf, for a before/after in one run
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.multiprocessing as mp

SYNCS = ("item", "tolist", "cpu", "numpy", "__float__", "__int__", "__bool__")


def _count_syncs(counter: dict) -> None:
    for name in SYNCS:
        original = getattr(torch.Tensor, name)

        def wrapper(self, *args, __original=original, __name=name, **kwargs):
            caller = sys._getframe(1).f_globals.get("__name__", "")
            if caller.startswith("pgolf"):
                counter[f"{caller}.{__name}"] = counter.get(f"{caller}.{__name}", 0) + 1
            return __original(self, *args, **kwargs)

        setattr(torch.Tensor, name, wrapper)


def _shards(directory: Path, vocab: int, bos: int) -> dict:
    from pgolf.data import shards

    rng = np.random.default_rng(0)
    tokens = rng.integers(2, vocab, 200_000).astype(np.uint16)
    tokens[rng.choice(tokens.size, 400, replace=False)] = bos
    tokens[0] = bos
    directory.mkdir(parents=True, exist_ok=True)
    shards.write_shard(directory / "train_000000.bin", tokens)
    return {"sha256": {}}


def _run(rank: int, world: int, root: str, out: str, port: int) -> None:
    sys.path.insert(0, root)
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from pgolf import dist as pdist
    from pgolf.config import parse_section, read_params
    from pgolf.model.config import ModelParams
    from pgolf.train import loop
    from pgolf.train.config import TrainConfig

    info = pdist.init()
    params = read_params(Path(root) / "params.yaml")
    train = {**params["train"], "iterations": 12, "warmup_steps": 0, "val_every": 0, "checkpoint_seconds": 0,
             "global_batch_tokens": 512, "micro_batch_tokens": 256, "seq_len": 64, "log_every": 1000}  # fmt: skip
    cfg = parse_section(train, "train", TrainConfig)
    model = {**params["model"], "num_layers": 2, "model_dim": 32, "parallel_start_layer": 1, "loop_start": 0,
             "loop_end": 0, "xsa_last_n": 1, "rope_dims": 4, "gate_window": 4}  # fmt: skip
    model_cfg = parse_section(model, "model", ModelParams).resolve(vocab_size=64, bos_id=1)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = _shards(Path(tmp) / "shards", 64, 1)
        run = loop.setup(model_cfg, cfg, Path(tmp) / "shards", manifest, info)
        counter: dict = {}
        _count_syncs(counter)
        summary = loop.train(run, val=None, resume_dir=Path(tmp) / "resume", live_dir=Path(tmp) / "live")
    if rank == 0:
        Path(out).write_text(json.dumps({"steps": summary["steps"], "calls": counter}))
    pdist.shutdown()


MODEL_ON_CPU = "pgolf.model.attention"
"""The CPU attention backend reads each row's longest segment on the host; on CUDA the flash backends get the
static bound ``train.seq_len`` (no read): counted apart, as the model's, not the loop's."""


def measure(root: Path, world: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        if world == 1:
            _run(0, 1, str(root), str(out), 0)
        else:
            mp.spawn(_run, args=(world, str(root), str(out), 29511), nprocs=world, join=True)
        result = json.loads(out.read_text())
    steps, calls = result["steps"], result["calls"]
    loop = sum(n for k, n in calls.items() if not k.startswith(MODEL_ON_CPU))
    return {"steps": steps, "loop_syncs_per_step": loop / steps,
            "cpu_attention_reads_per_step": (sum(calls.values()) - loop) / steps, "calls": calls}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="a pgolf checkout")
    parser.add_argument("--world", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    for world in args.world:
        r = measure(Path(args.root).resolve(), world)
        print(
            f"{args.root} world {world}: {r['loop_syncs_per_step']:.2f} host syncs per step in the loop over "
            f"{r['steps']} steps ({r['cpu_attention_reads_per_step']:.2f} more in the CPU attention backend) "
            f"{r['calls']}"
        )


if __name__ == "__main__":
    main()
