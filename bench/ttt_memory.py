"""Peak memory of one LoRA TTT chunk step (forward through the model with the batch's adapters, the loss of the
chunk's scored positions, backward) at the record's and the frontier's shapes, on CPU, eager, fp32 parameters as
the evaluate stage builds them. Each measurement runs in its own process; the figure is the step's peak resident
memory above the process's peak after building the model and adapters (``ru_maxrss``), so the model's own bytes
are not in it.

The shapes: ``record_1855``: rows = eval.lora_ttt.batch_docs (64), width = eval.lora_ttt.context (2048), chunk 48,
no n-gram tilt, the fixed soft-cap; ``frontier_2135``: width 2560, with the n-gram tilt (the model returns logits,
log-softmax in fp32, log p(hint)) and AsymLogit's learnable caps. ``--rows`` runs fewer rows (memory grows
linearly with the rows: the table scales to 64).

    python bench/ttt_memory.py --rows 8                     # this checkout
    python bench/ttt_memory.py --rows 8 --root ../old       # another checkout (94b81af or later)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ttt_step import PRESETS, build  # noqa: E402


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: Path, preset: str, rows: int) -> dict:
    import torch

    torch.set_num_threads(2)
    step = build(root, preset, rows, torch.device("cpu"))
    before = _peak_mib()
    start = time.perf_counter()
    loss = step.loss()
    loss.backward()
    return {**step.describe, "setup_peak_mib": round(before), "step_peak_mib": round(_peak_mib() - before),
            "seconds": round(time.perf_counter() - start, 1), "loss": float(loss)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(ROOT), help="a pgolf checkout")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--preset", choices=PRESETS, nargs="+", default=list(PRESETS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    if args.child:
        print(json.dumps(child(root, args.preset[0], args.rows)))
        return
    for preset in args.preset:
        cmd = [sys.executable, __file__, "--child", "--root", str(root), "--rows", str(args.rows), "--preset", preset]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{root.name} {preset}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        scaled = r["step_peak_mib"] * 64 / r["rows"]
        print(
            f"{root.name} {preset}: rows {r['rows']} width {r['width']}: step peak {r['step_peak_mib']:,} MiB "
            f"(x{64 // r['rows']} rows: ~{scaled / 1024:.1f} GiB at 64 rows), {r['seconds']} s, loss {r['loss']:.6f}"
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
