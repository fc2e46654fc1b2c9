"""The sub-checks of bench/gpu_check.py. Each runs in its own child process (``python bench/gpu_check.py --child
NAME ...``, :func:`child_main`), which writes its result as JSON to the file the driver names; a sub-check calls
:meth:`Context.keep` as soon as it knows a number, so that one killed at its timeout still leaves what it measured.

Part 1: ``environment``, ``pytest_gpu``, ``muon``, ``kernels``, ``train_step`` (recurrence off; it saves the compile
cache). Part 2: ``compile_cache`` (loads it), ``matmul_peak``, ``train_step_looped``, ``ttt_record``,
``ttt_frontier``. The train steps are bench/gpu_train_step.py's; the TTT chunk step is bench/ttt_step.py's.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import gpu_train_step, ttt_step  # noqa: E402
from bench import train_throughput as tt  # noqa: E402
from pgolf.params import load_section  # noqa: E402

MICRO_TOKENS = 98_304
CACHE_FILE = "compile_cache.bin"
OUT_FILE_LIMIT = 16 * 2**20
"""The largest file the device tool brings back from $OUT."""
TTT_ROWS = 64


@dataclass
class Context:
    """What a sub-check gets: the preset, the folders, and :meth:`keep` for its results so far."""

    preset: Path
    out: Path
    cache: Path
    result: Path
    device: torch.device
    found: dict = field(default_factory=dict)

    def keep(self, **fields) -> None:
        """Record ``fields`` now, in the result file (the driver reads it if this process is killed)."""
        self.found.update(fields)
        self.result.write_text(json.dumps({"status": "partial", **self.found}, default=str))


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], reps: int = 10, warmup: int = 3) -> float:
    """Median ms of ``fn`` over ``reps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    _sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        _sync()
        times.append((time.perf_counter() - start) * 1000)
    return round(float(np.median(times)), 3)


def record_configs(preset: Path):
    tokenizer = load_section("tokenizer", preset)
    model_cfg = load_section("model", preset).resolve(tokenizer.vocab_size, tokenizer.special_ids.bos)
    return model_cfg, load_section("train", preset)


# ------------------------------------------------------------------------------------------- environment


def environment(ctx: Context) -> dict:
    import inspect

    from pgolf.model import attention

    env: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                 "platform": platform.platform()}  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    device = ctx.device.type
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
    env["attention_available"] = {n: attention.available(n, device) for n in attention.BACKENDS}
    env["attention_backend"] = attention.select_backend(device)
    if attention.available("varlen", device) or _has_varlen():
        fn = attention.varlen_function()
        kwargs, gqa = attention.varlen_arguments(fn)
        env["varlen_signature"] = str(inspect.signature(fn))
        env["varlen_arguments"] = {"kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                                   "native_gqa": gqa}  # fmt: skip
    ctx.keep(**env)
    env["kernel_dtypes"] = kernel_dtypes(ctx) if device == "cuda" else "skipped: the fused kernels run on CUDA only"
    lines = [f"torch {env['torch']} cuda {env['cuda']} triton {env['triton']} python {env['python']}",
             f"gpu {env.get('gpu', 'none')}; attention backend {env['attention_backend']}; "
             f"varlen {env.get('varlen_arguments', 'absent')}",
             f"kernel dtypes {env['kernel_dtypes']}"]  # fmt: skip
    return {**env, "summary": lines}


def _has_varlen() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def kernel_dtypes(ctx: Context) -> dict:
    """Per dtype policy (fp32, record): the dtypes that reach the fused MLP kernel and the softcapped CE in one
    training forward of the record model under autocast (256 tokens), and the blocks' output (residual) dtype."""
    return {policy: _recording_forward(ctx, policy) for policy in ("fp32", "record")}


def _recording_forward(ctx: Context, policy: str) -> dict:
    from pgolf.dist import autocast
    from pgolf.model import gpt, layers
    from pgolf.model.gpt import GPT
    from pgolf.train.step import apply_dtype_policy

    model_cfg, _ = record_configs(ctx.preset)
    seen: dict[str, set] = {"mlp_kernel": set(), "softcap_ce": set(), "residual": set()}
    up, ce = layers.fused_up_activation, gpt.softcapped_cross_entropy

    def record_up(x, w, slope, **kw):
        seen["mlp_kernel"].add(f"{x.dtype}/{w.dtype}".replace("torch.", ""))
        return up(x, w, slope, **kw)

    def record_ce(logits, targets, cap, **kw):
        seen["softcap_ce"].add(str(logits.dtype).replace("torch.", ""))
        return ce(logits, targets, cap, **kw)

    layers.fused_up_activation, gpt.softcapped_cross_entropy = record_up, record_ce
    try:
        torch.manual_seed(0)
        model = GPT(model_cfg).to(ctx.device).train()
        apply_dtype_policy(model, policy)
        hooks = [b.register_forward_hook(lambda m, i, o: seen["residual"].add(str(o.dtype).replace("torch.", "")))
                 for b in model.blocks]  # fmt: skip
        ids = torch.randint(2, model_cfg.vocab_size, (1, 256), device=ctx.device)
        with autocast(ctx.device):
            model(ids, ids).backward()
        for h in hooks:
            h.remove()
    finally:
        layers.fused_up_activation, gpt.softcapped_cross_entropy = up, ce
    return {k: sorted(v) for k, v in seen.items()}


# ------------------------------------------------------------------------------------------- pytest -m gpu, Muon


def pytest_gpu(ctx: Context) -> dict:
    """``pytest -m gpu`` from the source tree; its output goes to pytest.txt as it runs."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    with open(ctx.out / "pytest.txt", "w") as log:
        run = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
    text = (ctx.out / "pytest.txt").read_text()
    tail = [line for line in text.splitlines() if line.strip()][-1:] or ["(no output)"]
    return {"returncode": run.returncode, "result": tail[0], "summary": [tail[0]]}


def muon(ctx: Context) -> dict:
    from bench.muon_step import time_variants

    model_cfg, train_cfg = record_configs(ctx.preset)
    shapes, medians = time_variants(model_cfg, train_cfg, ctx.device, True, rounds=5, steps=3)
    (a, ta), (b, tb) = medians.items()
    return {"matrices": {str(s): n for s, n in shapes.items()}, "ms_per_step": medians, "batched_over_per_matrix":
            tb / ta, "summary": [f"{a} {ta:.2f} ms, {b} {tb:.2f} ms (ratio {tb / ta:.2f})"]}  # fmt: skip


# ------------------------------------------------------------------------------------------- kernels


def kernels(ctx: Context) -> dict:
    """The MLP up-projection + LeakyReLU² forward+backward at 98,304 x 512 -> 2048 bf16 three ways (the Triton
    kernel, the eager math under torch.compile: cuBLAS + an inductor-fused activation, eager), the softcapped CE
    against eager at 98,304 x 8192, and every attention backend on one packed row."""
    from pgolf.kernels.mlp import eager_up_activation, fused_up_activation
    from pgolf.kernels.softcap_ce import eager_softcapped_ce, softcapped_cross_entropy

    dev, bf16 = ctx.device, torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(MICRO_TOKENS, 512, device=dev, dtype=bf16, generator=g).requires_grad_()
    w = (torch.randn(2048, 512, device=dev, dtype=bf16, generator=g) / 512**0.5).requires_grad_()
    dh = torch.randn(MICRO_TOKENS, 2048, device=dev, dtype=bf16, generator=g)
    compiled_up = torch.compile(eager_up_activation)
    ways = {"triton": lambda x, w: fused_up_activation(x, w, 0.5, triton=True),
            "compiled": lambda x, w: compiled_up(x, w, 0.5),
            "eager": lambda x, w: eager_up_activation(x, w, 0.5)}  # fmt: skip
    mlp_flops = 3 * 2 * MICRO_TOKENS * 512 * 2048  # forward + two backward matmuls
    reference = eager_up_activation(x, w, 0.5).float()
    mlp: dict = {}
    for name, fn in ways.items():
        ms = timed(lambda fn=fn: torch.autograd.grad(fn(x, w), (x, w), dh))
        err = float((fn(x, w).float() - reference).abs().max() / reference.abs().max())
        mlp[name] = {"ms": ms, "tflops": round(mlp_flops / ms / 1e9, 1), "max_rel_diff": err}
        ctx.keep(mlp_up=mlp)
    logits = (20 * torch.randn(MICRO_TOKENS, 8192, device=dev, generator=g)).to(bf16).requires_grad_()
    y = torch.randint(0, 8192, (MICRO_TOKENS,), device=dev, generator=g)
    ce_fused = timed(lambda: softcapped_cross_entropy(logits, y, 30.0, triton=True).mean().backward())
    ce_eager = timed(lambda: eager_softcapped_ce(logits, y, 30.0).mean().backward())
    loss_err = float((softcapped_cross_entropy(logits, y, 30.0, triton=True) - eager_softcapped_ce(logits, y, 30.0))
                     .abs().max())  # fmt: skip
    ce = {"fused_ms": ce_fused, "eager_ms": ce_eager, "max_loss_diff": loss_err}
    ctx.keep(softcap_ce=ce)
    attn = attention_backends(dev)
    lines = ["MLP up fwd+bwd: " + ", ".join(f"{n} {r['ms']:.2f} ms ({r['tflops']:.0f} TFLOP/s, rel. diff "
                                             f"{r['max_rel_diff']:.1e})" for n, r in mlp.items()),
             f"softcapped CE fwd+bwd {ce_fused:.2f} ms vs eager {ce_eager:.2f} ms; loss diff {loss_err:.1e}",
             ]  # fmt: skip
    lines += [f"attention {name}: {r['ms']:.2f} ms fwd+bwd, max diff to sdpa_gather {r['max_diff']:.1e}"
              if "ms" in r else f"attention {name}: {r}" for name, r in attn.items()]  # fmt: skip
    return {"mlp_up": mlp, "softcap_ce": ce, "attention": attn, "summary": lines}


def attention_backends(dev: torch.device) -> dict:
    """Every available backend on one packed row of the record's shapes (8 query heads, 4 KV heads, Dh 64,
    segments of at most 2048), forward + backward, and its largest difference to the exact sdpa_gather."""
    from pgolf.model.attention import BACKENDS, available, backend_fn

    rng = np.random.default_rng(0)
    _, _, cu = tt.synthetic_batch(SimpleNamespace(vocab_size=8192, bos_id=1), MICRO_TOKENS, 2048, rng, dev)
    g = torch.Generator(device=dev).manual_seed(1)
    q = torch.randn(1, MICRO_TOKENS, 8, 64, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
    k, v = (torch.randn(1, MICRO_TOKENS, 4, 64, device=dev, dtype=torch.bfloat16, generator=g).requires_grad_()
            for _ in range(2))  # fmt: skip
    dy = torch.randn_like(q)
    exact = backend_fn("sdpa_gather")(q, k, v, cu, 2048).float()
    out: dict = {}
    for name in BACKENDS:
        if not available(name, dev):
            out[name] = "unavailable"
            continue
        try:
            fn = backend_fn(name)
            ms = timed(lambda fn=fn: torch.autograd.grad(fn(q, k, v, cu, 2048), (q, k, v), dy), reps=5, warmup=2)
            diff = float((fn(q, k, v, cu, 2048).float() - exact).abs().max())
            out[name] = {"ms": ms, "max_diff": diff}
        except Exception as err:
            out[name] = f"error: {type(err).__name__}: {err}"[:500]
    return out


# ------------------------------------------------------------------------------------------- train steps


def train_step(ctx: Context) -> dict:
    """The loop's step, recurrence off (bench/gpu_train_step.py), then the compile cache saved for part 2."""
    found = gpu_train_step.measure(ctx.preset, looped=False, keep=ctx.keep)
    ctx.keep(**found)
    cache = save_compile_cache(ctx)
    return {**found, "compile_cache": cache, "summary": gpu_train_step.summary(ctx.found) + [cache["summary"]]}


def train_step_looped(ctx: Context) -> dict:
    found = gpu_train_step.measure(ctx.preset, looped=True, keep=ctx.keep)
    return {**found, "summary": gpu_train_step.summary({**ctx.found, **found})}


def matmul_peak(ctx: Context) -> dict:
    """The MFU denominator: a bf16 8192³ matmul's TFLOP/s on this GPU (and 4096³, what the old check used)."""
    peaks = {}
    for n, reps in ((4096, 200), (8192, 50)):
        a, b = (torch.randn(n, n, device=ctx.device, dtype=torch.bfloat16) for _ in range(2))
        for _ in range(5):
            a @ b
        _sync()
        start = time.perf_counter()
        for _ in range(reps):  # queued back to back: no host sync between them
            a @ b
        _sync()
        peaks[n] = round(2 * n**3 * reps / (time.perf_counter() - start) / 1e12, 1)
        ctx.keep(**{f"tflops_{n}": peaks[n]})
    return {"tflops": peaks[8192], "tflops_4096": peaks[4096],
            "summary": [f"bf16 matmul 8192³ {peaks[8192]:.0f} TFLOP/s (4096³ {peaks[4096]:.0f})"]}  # fmt: skip


# ------------------------------------------------------------------------------------------- compile cache


def save_compile_cache(ctx: Context) -> dict:
    """``torch.compiler.save_cache_artifacts()`` of this process into the cache folder and, when it is small enough
    to come back from the device tool, into ``--out``."""
    artifacts = torch.compiler.save_cache_artifacts()
    if artifacts is None:
        return {"saved": False, "summary": "compile cache: nothing to save"}
    data, info = artifacts
    ctx.cache.mkdir(parents=True, exist_ok=True)
    (ctx.cache / CACHE_FILE).write_bytes(data)
    copied = len(data) <= OUT_FILE_LIMIT
    if copied:
        (ctx.out / CACHE_FILE).write_bytes(data)
    kinds = {k: len(v) for k, v in info.artifacts.items()}
    where = f"{ctx.cache / CACHE_FILE}" + (f" and {ctx.out / CACHE_FILE}" if copied else " (over 16 MiB: not in --out)")
    return {"saved": True, "bytes": len(data), "artifacts": kinds, "in_out": copied,
            "summary": f"compile cache: {len(data):,} bytes ({kinds}) to {where}"}  # fmt: skip


def load_compile_cache(path: Path) -> dict:
    """``torch.compiler.load_cache_artifacts`` of ``path``: whether it was found and loaded, and what it held."""
    if not path.is_file():
        return {"found": False, "loaded": False, "reason": f"no compile cache at {path} (part 1 did not run here)"}
    data = path.read_bytes()
    info = torch.compiler.load_cache_artifacts(data)
    if info is None:
        reason = f"{path}: torch.compiler.load_cache_artifacts refused it (corrupt, or another torch)"
        return {"found": True, "loaded": False, "bytes": len(data), "reason": reason}
    kinds = {k: len(v) for k, v in info.artifacts.items()}
    return {"found": True, "loaded": True, "bytes": len(data), "artifacts": kinds}


def compile_cache(ctx: Context) -> dict:
    found = load_compile_cache(ctx.cache / CACHE_FILE)
    line = f"loaded {found['bytes']:,} bytes ({found['artifacts']})" if found["loaded"] else found["reason"]
    return {**found, "summary": [f"compile cache: {line}"]}


# ------------------------------------------------------------------------------------------- TTT


def ttt(ctx: Context, preset: str) -> dict:
    """One LoRA TTT chunk step (forward, backward, the adapters' AdamW) at 64 rows x the preset's context,
    compiled as ``eval.compile`` compiles it (one dynamic graph): compile seconds, ms per step, peak memory."""
    from pgolf import compiler as tc
    from pgolf.dist import init

    init()
    torch.cuda.reset_peak_memory_stats()
    step = ttt_step.build(ROOT, preset, TTT_ROWS, ctx.device, backend=tc.BACKEND)
    model_mib = round(torch.cuda.memory_allocated() / 2**20)
    opt = step.optimizer()
    start = time.perf_counter()
    step.step(opt)
    compile_seconds = round(time.perf_counter() - start, 1)
    fn = step.forward.fn
    ctx.keep(**step.describe, compile_seconds=compile_seconds, fullgraph=fn.fullgraph,
             graph_break=fn.break_reason or None, setup_memory_mib=model_mib,
             peak_memory_mib=round(torch.cuda.max_memory_allocated() / 2**20))  # fmt: skip
    ms = timed(lambda: step.step(opt), reps=5, warmup=1)
    peak = round(torch.cuda.max_memory_allocated() / 2**20)
    d = step.describe
    line = (f"{preset}: rows {d['rows']} width {d['width']} chunk {d['chunk']} (tilt {d['tilt']}, AsymLogit "
            f"{d['asym_logit']}): compile + first step {compile_seconds} s (fullgraph {fn.fullgraph}), "
            f"{ms:.1f} ms per chunk step, peak {peak:,} MiB (model + adapters {model_mib:,} MiB)")  # fmt: skip
    return {**ctx.found, "ms_per_chunk_step": ms, "peak_memory_mib": peak, "summary": [line]}


CHECKS: dict[str, Callable[[Context], dict]] = {
    "environment": environment,
    "pytest_gpu": pytest_gpu,
    "muon": muon,
    "kernels": kernels,
    "train_step": train_step,
    "compile_cache": compile_cache,
    "matmul_peak": matmul_peak,
    "train_step_looped": train_step_looped,
    "ttt_record": lambda ctx: ttt(ctx, "record_1855"),
    "ttt_frontier": lambda ctx: ttt(ctx, "frontier_2135"),
}


# ------------------------------------------------------------------------------------------- the child process


def child_main(args) -> None:
    """Run sub-check ``args.child`` and write its entry to ``args.result``. ``--load-cache``: load the compile cache
    first (part 2). ``--test-hang`` (tests only): start a grandchild, then sleep, so the driver's kill is tested."""
    ctx = Context(args.preset, args.out, args.cache, args.result,
                  torch.device("cuda" if torch.cuda.is_available() else "cpu"))  # fmt: skip
    if args.test_hang:
        grandchild = subprocess.Popen(["sleep", "3600"])
        ctx.keep(pid=os.getpid(), grandchild_pid=grandchild.pid)
        time.sleep(3600)
    try:
        cache = {"compile_cache": load_compile_cache(ctx.cache / CACHE_FILE)} if args.load_cache else {}
        ctx.keep(**cache)
        entry = {"status": "ok", **cache, **CHECKS[args.child](ctx)}
    except Exception as err:  # a failed sub-check is a result
        entry = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000], **ctx.found,
                 "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
    args.result.write_text(json.dumps(entry, indent=2, default=str))
