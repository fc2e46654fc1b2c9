"""Muon's optimizer step on a preset's hidden matrices: one Newton–Schulz call per matrix against one per batch
of same-shape matrices (``Muon.batch_by_shape``), in one run.

    python bench/muon_step.py                                   # params.yaml on this device
    python bench/muon_step.py --preset presets/record_1855.yaml --compile

Both variants run the same update math (:func:`pgolf.optim.muon.muon_update`) on the same random gradients, one
rank, alternating rounds so that machine noise hits both alike; the median ms per step of each is reported.
``Muon`` batches by default on CUDA only, from this comparison on CPU.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import device_name, publish  # noqa: E402
from pgolf import compiler as tc  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.params import load_section  # noqa: E402
from pgolf.train.step import build_optimizers  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="params.yaml")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=5, help="steps per round and variant")
    parser.add_argument("--compile", action="store_true", help=f"compile Newton–Schulz ({tc.BACKEND})")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()

    tokenizer = load_section("tokenizer", args.preset)
    model_cfg = load_section("model", args.preset).resolve(tokenizer.vocab_size, tokenizer.special_ids.bos)
    train_cfg = load_section("train", args.preset)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes, medians = time_variants(model_cfg, train_cfg, device, args.compile, args.rounds, args.steps)
    report(args, device, shapes, medians)


def time_variants(model_cfg, train_cfg, device, compile_ns: bool, rounds: int, steps: int) -> tuple[dict, dict]:
    """(matrix count by shape, median ms per step of each variant) for the preset's hidden matrices."""
    backend = tc.BACKEND if compile_ns else None
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    variants = {}
    for name, batch in (("one Newton–Schulz per matrix", False), ("batched by shape", True)):
        opt = build_optimizers(model, train_cfg, compile_backend=backend).muon
        opt.batch_by_shape = batch
        variants[name] = opt.step
    for run in variants.values():  # warm-up (and compilation)
        run(), run()
    sync = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            sync()
            start = time.perf_counter()
            for _ in range(steps):
                run()
            sync()
            times[name].append((time.perf_counter() - start) / steps * 1000)
    shapes: dict[tuple, int] = {}
    for group in opt.param_groups:
        for p in group["params"]:
            shapes[tuple(p.shape)] = shapes.get(tuple(p.shape), 0) + 1
    return shapes, {name: statistics.median(t) for name, t in times.items()}


def report(args, device, shapes: dict, medians: dict[str, float]) -> None:
    name = device_name(device)
    (base_name, base), (new_name, new) = medians.items()
    lines = [f"\n## {datetime.date.today()} Muon step, {Path(args.preset).name} on {name}\n",
             f"`python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`  ",
             f"{sum(shapes.values())} matrices: " + ", ".join(f"{n} x {s}" for s, n in shapes.items())
             + f"; Newton–Schulz {'compiled' if args.compile else 'eager'}; median of {args.rounds} rounds\n",
             "| variant | ms/step |", "|---|---:|", f"| {base_name} | {base:,.2f} |", f"| {new_name} | {new:,.2f} |",
             f"\nbatched / per matrix: {new / base:.2f}"]  # fmt: skip
    publish(lines, args.results)


if __name__ == "__main__":
    main()
