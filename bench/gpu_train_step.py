"""The GPU check's train step: the training loop's own step on one GPU, at one rank's share of the record's step.

What runs is :func:`pgolf.train.loop._one_step` on a :class:`pgolf.train.loop.Run` built by
:func:`pgolf.train.loop.setup`, as the train stage runs it: the schedule (LR, Muon momentum, recurrence), forward
and backward through the compiled model, the gradient clip (``train.grad_clip_scope``), the rank average (a no-op
at world size 1: no process group), Muon and the AdamWs, the EMA, and the step's one host synchronization
(:func:`pgolf.train.loop.agree`). The preset's sections are used as they are (``train.dtype_policy: record``, the
compiled Newton–Schulz, ``fullgraph=True`` with :class:`pgolf.compiler.CompiledModel`'s fallback), except:

* ``global_batch_tokens = micro_batch_tokens`` (98,304): gradient accumulation 1, as each of the record's 8 ranks;
* no checkpoints and no validation;
* the data: one synthetic shard of documents of 200-1,800 tokens (mean 1,000, so every packed row has 60-120
  segments and meets one cu_seqlens bucket: one graph per schedule);
* recurrence: off (part 1) or on from the first step (part 2, ``Progress.looping_from_step = 0``); the clock is
  restarted after the compiling step so that the schedule stays at progress ~0.

The first step compiles (its seconds are the compile cost: the model's graph and Muon's Newton–Schulz); two more
warm up; then ``steps`` are timed, and two are profiled for the top kernels.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

RECORD_TOKENS_PER_GPU = {"overall": 808_000, "recurrence off": 8.17e6 / 8, "recurrence on": 5.58e6 / 8}
"""The record's per-GPU training rates on 8xH100 (the record's log: 4,945 steps x 786,432
tokens in 599.6 s; 8.15-8.2 M tok/s unlooped, 5.58 M looped, over 8 GPUs)."""


def synthetic_shard(directory: Path, vocab_size: int, bos_id: int, tokens: int, seed: int = 0) -> Path:
    """One training shard of ``tokens`` random ids in documents of 200-1,800 tokens, each starting with BOS."""
    from pgolf.data.shards import shard_name, write_shard

    rng = np.random.default_rng(seed)
    ids = rng.integers(2, vocab_size, size=tokens).astype(np.uint16)
    starts = np.cumsum(rng.integers(200, 1801, size=tokens // 200 + 1))
    ids[np.concatenate([[0], starts[starts < tokens]])] = bos_id
    write_shard(directory / shard_name("train", 0), ids)
    return directory


def measure(preset: Path, looped: bool, keep, steps: int = 12) -> dict:
    """Compile, warm up and time the loop's step (module docstring); ``keep(**fields)`` records each result as
    soon as it is known (a sub-check killed at its timeout keeps them)."""
    from pgolf import compiler as tc
    from pgolf import dist
    from pgolf.params import load_section
    from pgolf.train import loop

    tokenizer = load_section("tokenizer", preset)
    model_cfg = load_section("model", preset).resolve(tokenizer.vocab_size, tokenizer.special_ids.bos)
    preset_cfg = load_section("train", preset)
    cfg = preset_cfg.model_copy(update={"global_batch_tokens": preset_cfg.micro_batch_tokens,
                                        "checkpoint_seconds": 0, "val_every": 0})  # fmt: skip
    info = dist.init()  # world size 1: no process group; TF32 as the stage sets it
    with tempfile.TemporaryDirectory() as tmp:
        shard_dir = synthetic_shard(Path(tmp), model_cfg.vocab_size, model_cfg.bos_id, 40 * cfg.micro_batch_tokens)
        run = loop.setup(model_cfg, cfg, shard_dir, {}, info)
        if looped:
            run.state.looping_from_step = 0
        logger = loop.Logger(Path(tmp) / "live", resumed=False, enabled=False, total=100)
        clock = loop.Clock(Path(tmp))
        torch.cuda.reset_peak_memory_stats()
        graphs, start = tc.graphs_compiled(), time.perf_counter()
        loop._one_step(run, logger, None, clock)  # compiles: the model's graph and Muon's Newton–Schulz
        compile_seconds = time.perf_counter() - start
        keep(looped=looped, dtype_policy=cfg.dtype_policy, tokens_per_step=cfg.micro_batch_tokens,
             compiled=run.compiling, compile_seconds=round(compile_seconds, 1), **_fullgraph(run.forward),
             graphs_compiled=tc.graphs_compiled() - graphs)  # fmt: skip
        clock.start(0.0)
        run.state.train_seconds = 0.0
        for _ in range(2):
            loop._one_step(run, logger, None, clock)
        torch.cuda.synchronize()
        graphs, start = tc.graphs_compiled(), time.perf_counter()
        for _ in range(steps):
            loop._one_step(run, logger, None, clock)
        torch.cuda.synchronize()
        seconds = (time.perf_counter() - start) / steps
        rates = _rates(run, looped, cfg.micro_batch_tokens, seconds, tc.graphs_compiled() - graphs)
        keep(**rates, peak_memory_mib=round(torch.cuda.max_memory_allocated() / 2**20))
        top = _profile(lambda: loop._one_step(run, logger, None, clock))
        logger.close()
    return {**rates, "peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20), "top_kernels": top}


def _fullgraph(forward) -> dict:
    """Whether the model compiled as one graph (``fullgraph=True``) and, if not, the first line of the error."""
    from pgolf.compiler import CompiledModel

    if not isinstance(forward, CompiledModel):
        return {"fullgraph": None}
    return {"fullgraph": forward.fullgraph, "graph_break": forward.break_reason or None}


def _rates(run, looped: bool, tokens: int, seconds: float, graphs_while_timed: int) -> dict:
    from bench.train_throughput import flops_per_token

    phase = "recurrence on" if looped else "recurrence off"
    flops = flops_per_token(run.model, looped, run.loader.next_batch().cu_seqlens)
    rate = tokens / seconds
    return {"ms_per_step": round(seconds * 1000, 2), "tokens_per_s": round(rate), "flops_per_token": flops,
            "tflops": round(rate * flops / 1e12, 1), "graphs_while_timed": graphs_while_timed,
            "ratio_to_record_phase": round(rate / RECORD_TOKENS_PER_GPU[phase], 3),
            "ratio_to_record_808k": round(rate / RECORD_TOKENS_PER_GPU["overall"], 3)}  # fmt: skip


def _profile(step, steps: int = 2, limit: int = 5) -> list[dict]:
    """The ``limit`` costliest kernels of ``steps`` steps by self GPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.self_device_time_total > 0]
    total = sum(e.self_device_time_total for e in events) or 1.0
    events.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return [{"op": e.key[:120], "ms_per_step": round(e.self_device_time_total / 1000 / steps, 2),
             "share": round(e.self_device_time_total / total, 3)} for e in events[:limit]]  # fmt: skip


def summary(found: dict) -> list[str]:
    """The sub-check's lines in summary_N.txt."""
    phase = "recurrence on" if found["looped"] else "recurrence off"
    lines = [f"{phase}, dtype policy {found['dtype_policy']}: compile + first step {found['compile_seconds']} s "
             f"(fullgraph {found['fullgraph']}{'; ' + found['graph_break'] if found.get('graph_break') else ''}), "
             f"{found['graphs_compiled']} graphs"]  # fmt: skip
    if "ms_per_step" in found:
        lines.append(f"{found['ms_per_step']} ms/step, {found['tokens_per_s']:,} tok/s "
                     f"({found['ratio_to_record_phase']}x the record's {phase} rate per GPU, "
                     f"{found['ratio_to_record_808k']}x 808k), {found['tflops']} model TFLOP/s, "
                     f"{found['graphs_while_timed']} graphs while timed, "
                     f"peak {found['peak_memory_mib']:,} MiB")  # fmt: skip
    top = found.get("top_kernels", [])
    lines += [f"top: {k['op'][:60]} {k['ms_per_step']} ms/step ({k['share']:.0%})" for k in top]
    return lines
