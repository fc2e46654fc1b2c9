"""The one GPU check: the record preset's CUDA paths on one GPU, in one run of at most ~8 minutes.

    bash bench/gpu_check.sh --out DIR            # installs .whl/ wheels if present, then runs this
    python bench/gpu_check.py --out DIR          # from the source tree (PYTHONPATH=.)

Sub-checks, in order (each skipped with its reason when there is no CUDA device or the time budget is spent):

1. ``environment``: Python / torch / CUDA / Triton / GPU, the attention backend chosen, the installed
   ``varlen_attn`` signature and the arguments built from it, the dtypes that reach the fused kernels under
   autocast (and the residual dtype of the record's dtype policy).
2. ``kernels``: fused MLP up-projection + LeakyReLU² forward+backward against cuBLAS + eager at 98,304 x 512 ->
   2048 bf16; softcapped CE against eager at 98,304 x 8192; every available attention backend on one packed
   98,304-token row (ms forward+backward, max difference to the exact ``sdpa_gather``).
3. ``train_step``: the record model compiled as training compiles it, 98,304 tokens per step on this GPU,
   recurrence off and on: ms/step, tokens/s, model TFLOP/s, MFU against a matmul measured in this run, the ratio
   to the record's per-GPU rates, peak memory, graphs built (warm-up and while timed), top kernels.
4. ``ttt``: one compiled LoRA TTT chunk step and the scoring throughput at the record's TTT shapes.
5. ``pytest_gpu``: ``pytest -m gpu`` (output in ``pytest.txt``).
6. ``muon``: the Muon step on the record's 66 matrices, one Newton–Schulz per matrix against batched by shape.

Every sub-check rewrites ``gpu_check.json`` (the results so far, with the command and commit) and
``summary.txt``, so a run cut short still leaves what it measured. Nothing else is written to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import train_throughput as tt  # noqa: E402
from pgolf.params import load_section  # noqa: E402

RECORD_TOKENS_PER_GPU = {"overall": 808_000, "recurrence off": 8.17e6 / 8, "recurrence on": 5.58e6 / 8}
"""The record's per-GPU training rates on 8xH100 (the record's log: 4,945 steps x 786,432
tokens in 599.6 s; 8.15-8.2 M tok/s unlooped, 5.58 M looped, over 8 GPUs)."""
MICRO_TOKENS = 98_304
SKIP_NO_CUDA = "no CUDA device (dry run)"


class Check:
    """The results so far, rewritten to ``out`` after every sub-check, and the time budget."""

    def __init__(self, out: Path, budget: float, command: str, commit: str) -> None:
        self.out, self.budget, self.start = out, budget, time.perf_counter()
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self.results: dict = {"command": command, "commit": commit, "date": datetime.date.today().isoformat(),
                              "budget_seconds": budget, "checks": {}}  # fmt: skip
        out.mkdir(parents=True, exist_ok=True)

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.start)

    def run(self, name: str, fn: Callable[[Check], dict], needs_cuda: bool = True, min_seconds: float = 20) -> None:
        entry: dict
        if needs_cuda and not self.cuda:
            entry = {"status": "skipped", "reason": SKIP_NO_CUDA}
        elif self.left() < min_seconds:
            entry = {"status": "skipped", "reason": f"time budget: {self.left():.0f} s left, needs ~{min_seconds:.0f}"}
        else:
            began = time.perf_counter()
            try:
                entry = {"status": "ok", **fn(self)}
            except Exception as err:  # a failed sub-check is a result; the next ones still run
                entry = {"status": "error", "error": f"{type(err).__name__}: {err}"[:2000],
                         "traceback": traceback.format_exc()[-4000:]}  # fmt: skip
            entry["seconds"] = round(time.perf_counter() - began, 1)
            if self.cuda:
                torch.cuda.empty_cache()
        self.results["checks"][name] = entry
        self.results["elapsed_seconds"] = round(time.perf_counter() - self.start, 1)
        self.write()
        print(f"[gpu_check] {name}: {entry['status']} {entry.get('reason', entry.get('error', ''))}"[:300], flush=True)

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        (self.out / "summary.txt").write_text(summary(self.results))


def summary(results: dict) -> str:
    lines = [f"gpu_check {results['date']} commit {results['commit']}", f"command: {results['command']}"]
    for name, entry in results["checks"].items():
        head = f"- {name}: {entry['status']}"
        if entry["status"] != "ok":
            lines.append(f"{head} ({entry.get('reason') or entry.get('error')})")
            continue
        lines.append(f"{head} in {entry['seconds']} s")
        lines += [f"    {line}" for line in entry.get("summary", [])]
    return "\n".join(lines) + "\n"


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
    return float(np.median(times))


def record_configs(preset: Path):
    tokenizer = load_section("tokenizer", preset)
    model_cfg = load_section("model", preset).resolve(tokenizer.vocab_size, tokenizer.special_ids.bos)
    return model_cfg, load_section("train", preset)


# ------------------------------------------------------------------------------------------- 1. environment


def environment(check: Check) -> dict:
    import inspect

    from pgolf.model import attention

    env: dict = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
                 "platform": platform.platform()}  # fmt: skip
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if check.cuda:
        props = torch.cuda.get_device_properties(0)
        env.update(gpu=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1))  # fmt: skip
    device = "cuda" if check.cuda else "cpu"
    env["attention_available"] = {n: attention.available(n, device) for n in attention.BACKENDS}
    env["attention_backend"] = attention.select_backend(device)
    if attention.available("varlen", device) or _has_varlen():
        fn = attention.varlen_function()
        kwargs, gqa = attention.varlen_arguments(fn)
        env["varlen_signature"] = str(inspect.signature(fn))
        env["varlen_arguments"] = {"kwargs": {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()},
                                   "native_gqa": gqa}  # fmt: skip
    env["kernel_dtypes"] = kernel_dtypes(check.device) if check.cuda else "skipped: the fused kernels run on CUDA only"
    lines = [f"torch {env['torch']} cuda {env['cuda']} triton {env['triton']} python {env['python']}",
             f"gpu {env.get('gpu', 'none')}; attention backend {env['attention_backend']}; "
             f"varlen {env.get('varlen_arguments', 'absent')}",
             f"kernel dtypes {env['kernel_dtypes']}"]  # fmt: skip
    return {**env, "summary": lines}


def _has_varlen() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch.nn.attention.varlen") is not None


def kernel_dtypes(device: torch.device) -> dict:
    """Per dtype policy (fp32, record): the dtypes that reach the fused MLP kernel and the softcapped CE in one
    training forward of the record model under autocast (256 tokens), and the blocks' output (residual) dtype."""
    return {policy: _recording_forward(device, policy) for policy in ("fp32", "record")}


def _recording_forward(device: torch.device, policy: str) -> dict:
    from pgolf.dist import autocast
    from pgolf.model import gpt, layers
    from pgolf.model.gpt import GPT
    from pgolf.train.step import apply_dtype_policy

    model_cfg, _ = record_configs(ROOT / "presets" / "record_1855.yaml")
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
        model = GPT(model_cfg).to(device).train()
        apply_dtype_policy(model, policy)
        hooks = [b.register_forward_hook(lambda m, i, o: seen["residual"].add(str(o.dtype).replace("torch.", "")))
                 for b in model.blocks]  # fmt: skip
        ids = torch.randint(2, model_cfg.vocab_size, (1, 256), device=device)
        with autocast(device):
            model(ids, ids).backward()
        for h in hooks:
            h.remove()
    finally:
        layers.fused_up_activation, gpt.softcapped_cross_entropy = up, ce
    return {k: sorted(v) for k, v in seen.items()}


# ------------------------------------------------------------------------------------------- 2. kernels


def kernels(check: Check) -> dict:
    import torch.nn.functional as F

    from pgolf.kernels.mlp import eager_up_activation, fused_up_activation
    from pgolf.kernels.softcap_ce import eager_softcapped_ce, softcapped_cross_entropy

    dev, bf16 = check.device, torch.bfloat16
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(MICRO_TOKENS, 512, device=dev, dtype=bf16, generator=g).requires_grad_()
    w = (torch.randn(2048, 512, device=dev, dtype=bf16, generator=g) / 512**0.5).requires_grad_()
    dh = torch.randn(MICRO_TOKENS, 2048, device=dev, dtype=bf16, generator=g)

    def mlp(fn):
        def step():
            h = fn(x, w)
            torch.autograd.grad(h, (x, w), dh)

        return step

    fused_ms = timed(mlp(lambda x, w: fused_up_activation(x, w, 0.5, triton=True)))
    eager_ms = timed(mlp(lambda x, w: eager_up_activation(x, w, 0.5)))
    matmul_ms = timed(lambda: F.linear(x.detach(), w.detach()))
    h_fused, h_eager = fused_up_activation(x, w, 0.5, triton=True), eager_up_activation(x, w, 0.5)
    mlp_err = float((h_fused.float() - h_eager.float()).abs().max() / h_eager.float().abs().max())
    logits = (20 * torch.randn(MICRO_TOKENS, 8192, device=dev, generator=g)).to(bf16).requires_grad_()
    y = torch.randint(0, 8192, (MICRO_TOKENS,), device=dev, generator=g)

    def ce(fn):
        return lambda: fn(logits, y).mean().backward()

    ce_fused = timed(ce(lambda z, t: softcapped_cross_entropy(z, t, 30.0, triton=True)))
    ce_eager = timed(ce(lambda z, t: eager_softcapped_ce(z, t, 30.0)))
    loss_err = float((softcapped_cross_entropy(logits, y, 30.0, triton=True) - eager_softcapped_ce(logits, y, 30.0))
                     .abs().max())  # fmt: skip
    attn = attention_backends(dev)
    mlp_flops = 3 * 2 * MICRO_TOKENS * 512 * 2048  # forward + two backward matmuls
    lines = [
        f"fused MLP up fwd+bwd {fused_ms:.2f} ms ({mlp_flops / fused_ms / 1e9:.0f} TFLOP/s) vs eager "
        f"{eager_ms:.2f} ms (cuBLAS forward alone {matmul_ms:.2f} ms); rel. diff {mlp_err:.1e}",
        f"softcapped CE fwd+bwd {ce_fused:.2f} ms vs eager {ce_eager:.2f} ms; loss diff {loss_err:.1e}",
    ]
    lines += [f"attention {name}: {r['ms']:.2f} ms fwd+bwd, max diff to sdpa_gather {r['max_diff']:.1e}"
              if "ms" in r else f"attention {name}: {r}" for name, r in attn.items()]  # fmt: skip
    return {"mlp_up": {"fused_ms": fused_ms, "eager_ms": eager_ms, "cublas_forward_ms": matmul_ms,
                       "fused_tflops": mlp_flops / fused_ms / 1e9, "max_rel_diff": mlp_err},
            "softcap_ce": {"fused_ms": ce_fused, "eager_ms": ce_eager, "max_loss_diff": loss_err},
            "attention": attn, "summary": lines}  # fmt: skip


def attention_backends(dev: torch.device) -> dict:
    """Every available backend on one packed row of the record's shapes (8 query heads, 4 KV heads, Dh 64,
    segments of at most 2048), forward + backward, and its largest difference to the exact sdpa_gather."""
    from pgolf.model.attention import BACKENDS, available, backend_fn

    rng = np.random.default_rng(0)
    x, _, cu = tt.synthetic_batch(SimpleNamespace(vocab_size=8192, bos_id=1), MICRO_TOKENS, 2048, rng, dev)
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


# ------------------------------------------------------------------------------------------- 3. train step


def train_step(check: Check, preset: Path) -> dict:
    """bench/train_throughput.py's measurement at the record preset: 98,304 tokens per step on this GPU, the
    compile warm-up limited to the bucket the synthetic rows use (both schedules), then a profile."""
    model_cfg, train_cfg = record_configs(preset)
    rng = np.random.default_rng(0)
    batches = [tt.synthetic_batch(model_cfg, MICRO_TOKENS, train_cfg.seq_len, rng, check.device)]
    peak = tt.matmul_peak(check.device, torch.bfloat16)
    args = SimpleNamespace(steps=8, warmup=2, profile=2, buckets=(int(batches[0][2].numel()),))
    torch.cuda.reset_peak_memory_stats()
    compiling, compile_seconds, rows, top = tt.bench_mode(model_cfg, train_cfg, batches, check.device, args, peak,
                                                          compiling=True)  # fmt: skip
    memory = torch.cuda.max_memory_allocated() / 2**20
    from pgolf import compiler as tc

    out_rows, lines = [], [f"matmul peak {peak / 1e12:.0f} TFLOP/s; compile + warm-up {compile_seconds:.0f} s; "
                           f"peak memory {memory:,.0f} MiB"]  # fmt: skip
    for looped, ms, rate, flops, mfu, recompiles in rows:
        phase = "recurrence on" if looped else "recurrence off"
        ratio = rate / RECORD_TOKENS_PER_GPU[phase]
        out_rows.append({"recurrence": looped, "ms_per_step": ms, "tokens_per_s": rate, "flops_per_token": flops,
                         "tflops": rate * flops / 1e12, "mfu": mfu, "graphs_while_timed": recompiles,
                         "ratio_to_record_phase": ratio,
                         "ratio_to_record_808k": rate / RECORD_TOKENS_PER_GPU["overall"]})  # fmt: skip
        lines.append(f"{phase}: {ms:.1f} ms/step, {rate:,.0f} tok/s ({ratio:.2f}x the record's {phase} rate per "
                     f"GPU, {rate / 808_000:.2f}x 808k), {rate * flops / 1e12:.0f} TFLOP/s, MFU {mfu:.1%}, "
                     f"{recompiles} graphs while timed")  # fmt: skip
    lines += [f"top: {name[:60]} {ms:.1f} ms/step ({share:.0%})" for name, ms, share, _ in top[:5]]
    return {"compiled": compiling, "backend": tc.BACKEND, "compile_seconds": compile_seconds,
            "matmul_peak_tflops": peak / 1e12, "peak_memory_mib": memory, "graphs_total": tc.graphs_compiled(),
            "rows": out_rows, "top_kernels": [{"op": n, "ms_per_step": ms, "share": sh, "calls_per_step": c}
                                              for n, ms, sh, c in top],
            "summary": lines}  # fmt: skip


# ------------------------------------------------------------------------------------------- 4. TTT


def synthetic_val(num_docs: int, doc_tokens: int, vocab_size: int, bos_id: int, seed: int = 0):
    """A validation stream of ``num_docs`` random documents of ``doc_tokens`` tokens (BOS + ids), 3 bytes each."""
    from pgolf.score.bpb import ValData

    rng = np.random.default_rng(seed)
    docs = rng.integers(2, vocab_size, size=(num_docs, doc_tokens + 1))
    docs[:, 0] = bos_id
    tokens = docs.reshape(-1).astype(np.uint16)
    target_bytes = np.where(tokens == bos_id, 0, 3).astype(np.int64)
    return ValData(tokens, target_bytes, "sidecar")


def ttt(check: Check, preset: Path, doc_tokens: int = 144) -> dict:
    """The record's evaluation modes as the evaluate stage runs them (compiled, warm-up untimed), on a record-size
    model with random weights: phased LoRA TTT over two batches of 64 documents of ``doc_tokens`` tokens (chunks
    of 48: a few width buckets, so compilation fits the check), and plain scoring of 2048-token windows."""
    from pgolf.eval.modes import context, run_mode
    from pgolf.model.gpt import GPT
    from pgolf.score.documents import split_documents

    model_cfg, _ = record_configs(preset)
    cfg = load_section("eval", preset)
    score = load_section("score", preset)
    lora = cfg.lora_ttt.model_copy(update={"phases": [64]})
    torch.manual_seed(0)
    model = GPT(model_cfg).to(check.device)
    out, lines = {}, []
    for name, val, update in (
        ("lora_ttt", synthetic_val(128, doc_tokens, model_cfg.vocab_size, model_cfg.bos_id), {"lora_ttt": lora}),
        ("plain", synthetic_val(64, 4096, model_cfg.vocab_size, model_cfg.bos_id, seed=1), {}),
    ):
        mode_cfg = cfg.model_copy(update={"progress": False, "compile": True, **update})
        docs = split_documents(val.tokens, model_cfg.bos_id)
        result = run_mode(name, model, val, docs, score, mode_cfg, context(model, mode_cfg, looped=True))
        rate = result.totals.tokens / result.seconds["eval"]
        out[name] = {"tokens": result.totals.tokens, "seconds": result.seconds, "compile": result.compile,
                     "tokens_per_s": rate}  # fmt: skip
        lines.append(f"{name}: {rate:,.0f} scored tokens/s ({result.totals.tokens:,} tokens, "
                     f"{result.seconds['eval']:.1f} s), warm-up {result.compile.get('warmup_seconds', 0):.0f} s "
                     f"building {result.compile.get('graphs_warmup')} graphs, "
                     f"{result.compile.get('graphs_scoring')} while scoring")  # fmt: skip
    chunks = 128 * -(-doc_tokens // lora.chunk_size)
    out["lora_ttt"]["ms_per_chunk_step"] = out["lora_ttt"]["seconds"]["eval"] * 1000 / (chunks / lora.batch_docs)
    lines.append(
        f"lora_ttt: {out['lora_ttt']['ms_per_chunk_step']:.1f} ms per chunk step of {lora.batch_docs} "
        "documents (score + adapter step)"
    )
    return {**out, "summary": lines}


# ------------------------------------------------------------------------------------------- 5. pytest -m gpu


def pytest_gpu(check: Check) -> dict:
    """``pytest -m gpu`` from the source tree; its output goes to pytest.txt."""
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", str(ROOT / "tests")]
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(30, check.left() - 60))
    (check.out / "pytest.txt").write_text(run.stdout + run.stderr)
    tail = [line for line in run.stdout.splitlines() if line.strip()][-1:] or ["(no output)"]
    return {"returncode": run.returncode, "result": tail[0], "summary": [tail[0]]}


# ------------------------------------------------------------------------------------------- 6. Muon


def muon(check: Check, preset: Path) -> dict:
    from bench.muon_step import time_variants

    model_cfg, train_cfg = record_configs(preset)
    shapes, medians = time_variants(model_cfg, train_cfg, check.device, True, rounds=5, steps=3)
    (a, ta), (b, tb) = medians.items()
    return {"matrices": {str(s): n for s, n in shapes.items()}, "ms_per_step": medians, "batched_over_per_matrix":
            tb / ta, "summary": [f"{a} {ta:.2f} ms, {b} {tb:.2f} ms (ratio {tb / ta:.2f})"]}  # fmt: skip


# ------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_check.json, summary.txt, pytest.txt")
    parser.add_argument("--preset", default=str(ROOT / "presets" / "record_1855.yaml"), type=Path)
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for all sub-checks (start excluded)")
    parser.add_argument("--commit", default=None, help="the commit being checked (default: git rev-parse HEAD)")
    args = parser.parse_args()
    check = Check(args.out, args.budget, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), args.commit or _commit())
    check.run("environment", environment, needs_cuda=False, min_seconds=0)
    check.run("kernels", kernels, min_seconds=30)
    check.run("train_step", lambda c: train_step(c, args.preset), min_seconds=150)
    check.run("ttt", lambda c: ttt(c, args.preset), min_seconds=60)
    check.run("pytest_gpu", pytest_gpu, needs_cuda=False, min_seconds=40)
    check.run("muon", lambda c: muon(c, args.preset), min_seconds=20)
    print(summary(check.results))


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
