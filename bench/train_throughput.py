"""Training throughput of a preset on this device: ms/step, tokens/s, model FLOPs per token, MFU, peak memory.

    python bench/train_throughput.py --preset presets/record_1855.yaml --micro-batch-tokens 98304 --steps 200
    python bench/train_throughput.py --preset params.yaml --steps 10            # the CPU default
    python bench/train_throughput.py --preset params.yaml --compile on          # inductor on this device
    python bench/train_throughput.py --preset presets/record_1855.yaml --grad-accum 8 --profile 3   # + top costs

Compilation (``--compile auto``: the preset's ``train.compile`` on CUDA, as training does) goes through
:mod:`pgolf.compiler`: the model as one graph per cu_seqlens bucket and schedule, Muon's Newton–Schulz, and
the bucket warm-up; compile seconds and the graphs built during the timed steps (0 expected) are reported.

Steps run on synthetic packed rows (documents of random length, attention segments of at most ``train.seq_len``)
through the real model, optimizer groups and gradient accumulation of the preset, with recurrence off and on.

Model FLOPs per token (training = 3x forward; embedding lookups and element-wise work not counted):

    forward = 2 * (sum over block applications of its matrix parameters) + 2 * vocab * dim      (matmuls)
            + 4 * dim * mean_context * applications                                              (QK^T and AV)

with mean_context = (s + 1) / 2 averaged over the segment lengths s of the batch (causal, document-isolated). MFU
is achieved FLOPs / the peak of a large matmul measured on the same device in the same dtype.
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import device_name, publish  # noqa: E402
from pgolf import compiler as tc  # noqa: E402
from pgolf.dist import autocast  # noqa: E402
from pgolf.model.config import ModelConfig  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.params import load_section  # noqa: E402
from pgolf.train.loader import CU_PAD_MULTIPLE, build_cu_seqlens  # noqa: E402
from pgolf.train.step import build_optimizers  # noqa: E402


def synthetic_batch(cfg: ModelConfig, tokens: int, seq_len: int, rng: np.random.Generator, device: torch.device):
    ids = rng.integers(2, cfg.vocab_size, size=tokens + 1)
    bos = np.cumsum(rng.integers(200, 3 * seq_len, size=tokens // 200 + 2))
    bos = np.concatenate([[0], bos[bos < tokens]])
    ids[bos] = cfg.bos_id
    cu = build_cu_seqlens(bos, tokens, seq_len, CU_PAD_MULTIPLE)
    x, y = torch.from_numpy(ids[:-1])[None], torch.from_numpy(ids[1:])[None]
    return x.to(device), y.to(device), cu.to(device)


def flops_per_token(model: GPT, looped: bool, cu: torch.Tensor) -> float:
    lengths = (cu[1:] - cu[:-1]).double()
    mean_context = float(((lengths + 1) / 2 * lengths).sum() / lengths.sum())
    roles = model.param_roles()
    per_layer = [sum(p.numel() for n, p in block.named_parameters() if roles[f"blocks.{i}.{n}"] in ("attn", "mlp"))
                 for i, block in enumerate(model.blocks)]  # fmt: skip
    order = model.schedule(looped).order
    cfg = model.cfg
    forward = 2 * sum(per_layer[i] for i in order) + 2 * cfg.vocab_size * cfg.model_dim
    forward += 4 * cfg.model_dim * mean_context * len(order)
    return 3.0 * forward


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    n = 4096 if device.type == "cuda" else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    _sync(device)
    reps = 50 if device.type == "cuda" else 5
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(model, opts, forward, batches, steps: int, warmup: int, looped: bool, device) -> tuple[float, float, int]:
    """(seconds per optimizer step after ``warmup`` untimed steps, seconds of those warm-up steps, graphs
    torch.compile built during the timed steps)."""
    begin = time.perf_counter()
    for i in range(warmup + steps):
        if i == warmup:
            _sync(device)
            start, graphs = time.perf_counter(), tc.graphs_compiled()
        one_step(opts, forward, batches, looped, device)
    _sync(device)
    return (time.perf_counter() - start) / steps, start - begin, tc.graphs_compiled() - graphs


def one_step(opts, forward, batches, looped: bool, device) -> None:
    """Gradient accumulation over ``batches``, then the optimizer step."""
    for x, y, cu in batches:
        with autocast(device):
            loss = forward(x, y, cu_seqlens=cu, looped=looped)
        (loss / len(batches)).backward()
    opts.step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="params.yaml")
    parser.add_argument("--micro-batch-tokens", type=int, help="override train.micro_batch_tokens")
    parser.add_argument("--grad-accum", type=int, help="micro-batches per step (default: the preset's on 1 rank)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--compile", choices=("auto", "on", "off", "both"), default="auto",
                        help="auto: train.compile on CUDA (as training); on/off: force; both: eager then compiled "
                             "in one run, with their ratio")  # fmt: skip
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after timing, profile this many steps (recurrence on, last mode) and report the top "
                             "costs by self device time")  # fmt: skip
    parser.add_argument(
        "--buckets",
        type=int,
        nargs="+",
        help="cu_seqlens lengths the compile warm-up builds (default: all of BUCKET_LENGTHS)",
    )
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()

    tokenizer = load_section("tokenizer", args.preset)
    model_cfg = load_section("model", args.preset).resolve(tokenizer.vocab_size, tokenizer.special_ids.bos)
    train_cfg = load_section("train", args.preset)
    micro = args.micro_batch_tokens or train_cfg.micro_batch_tokens
    accum = args.grad_accum or train_cfg.global_batch_tokens // micro
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rng = np.random.default_rng(0)
    batches = [synthetic_batch(model_cfg, micro, train_cfg.seq_len, rng, device) for _ in range(accum)]
    peak = matmul_peak(device, torch.bfloat16 if device.type == "cuda" else torch.float32)
    modes = {"auto": [tc.enabled(train_cfg.compile, device)], "on": [True], "off": [False], "both": [False, True]}
    results = [bench_mode(model_cfg, train_cfg, batches, device, args, peak, compiling)
               for compiling in modes[args.compile]]  # fmt: skip
    memory = (torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda"
              else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # fmt: skip
    report(args, device, micro, accum, peak, memory, results)


def bench_mode(model_cfg, train_cfg, batches, device, args, peak, compiling: bool) -> tuple[bool, float, list, list]:
    """(compiling, compile + warm-up seconds, one row per recurrence setting, top profiled costs) for a fresh
    model."""
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    opts = build_optimizers(model, train_cfg, compile_backend=tc.BACKEND if compiling else None)
    forward = tc.compile_model(model, train_cfg.seq_len) if compiling else model
    compile_seconds = 0.0
    if compiling:
        start = time.perf_counter()
        x, y, _ = batches[0]
        tc.bucket_warmup(forward, model, x, y, seq_len=train_cfg.seq_len, autocast=lambda: autocast(device),
                         buckets=getattr(args, "buckets", None))  # fmt: skip
        compile_seconds = time.perf_counter() - start
    tokens = sum(x.numel() for x, _, _ in batches)
    rows = []
    for looped in (False, True):
        seconds, warm_seconds, recompiles = measure(model, opts, forward, batches, args.steps, args.warmup, looped,
                                                    device)  # fmt: skip
        compile_seconds += warm_seconds if compiling else 0.0
        flops = flops_per_token(model, looped, batches[0][2])
        rows.append((looped, seconds * 1000, tokens / seconds, flops, tokens / seconds * flops / peak, recompiles))
    top = profile_steps(opts, forward, batches, args.profile, device) if args.profile else []
    return compiling, compile_seconds, rows, top


def profile_steps(opts, forward, batches, steps: int, device, limit: int = 8) -> list[tuple[str, float, float, int]]:
    """The ``limit`` costliest ops of ``steps`` optimizer steps with recurrence on, by self time on the device
    (CUDA kernels on a GPU, CPU time otherwise): (name, ms per step, share of the total, calls per step)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            one_step(opts, forward, batches, True, device)
        _sync(device)
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    events = [e for e in prof.key_averages() if getattr(e, attr) > 0]
    total = sum(getattr(e, attr) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, attr), reverse=True)
    return [(e.key, getattr(e, attr) / 1000 / steps, getattr(e, attr) / total, e.count // steps)
            for e in events[:limit]]  # fmt: skip


def report(args, device, micro, accum, peak, memory, results) -> None:
    name = device_name(device)
    lines = [f"\n## {datetime.date.today()} {Path(args.preset).name} on {name}\n",
             f"`python bench/{Path(__file__).name} {' '.join(sys.argv[1:])}`  ",
             f"tokens/step {micro * accum:,} ({accum} x {micro:,}), matmul peak {peak / 1e12:.3f} TFLOP/s, "
             f"peak memory {memory:,.0f} MiB\n",
             "| mode | recurrence | ms/step | tokens/s | model FLOPs/token | MFU | graphs built while timed |",
             "|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for compiling, compile_seconds, rows, _ in results:
        mode = f"compiled ({tc.BACKEND}, {compile_seconds:.0f} s untimed)" if compiling else "eager"
        for looped, ms, rate, flops, mfu, recompiles in rows:
            lines.append(f"| {mode} | {'on' if looped else 'off'} | {ms:,.1f} | {rate:,.0f} | {flops / 1e6:,.1f} M "
                         f"| {mfu:.1%} | {recompiles} |")  # fmt: skip
    if len(results) == 2:
        ratios = [c[2] / e[2] for e, c in zip(results[0][2], results[1][2], strict=True)]
        lines.append(f"\ncompiled / eager tokens/s: {ratios[0]:.2f} (recurrence off), {ratios[1]:.2f} (on)")
    if top := results[-1][3]:
        lines += [
            f"\nTop costs by self {'GPU' if device.type == 'cuda' else 'CPU'} time ({args.profile} profiled "
            "steps, recurrence on):\n",
            "| op | ms/step | share | calls/step |",
            "|---|---:|---:|---:|",
        ]
        lines += [f"| `{name[:80]}` | {ms:,.1f} | {share:.1%} | {calls} |" for name, ms, share, calls in top]
    publish(lines, args.results)


if __name__ == "__main__":
    main()
