"""The one GPU check: the record preset's CUDA paths on one H100/H200, in two runs on one warm device machine.

    bash bench/gpu_check.sh --part 1 --out "$OUT"     # ~4 min: environment, pytest -m gpu, Muon, kernels, train step
    bash bench/gpu_check.sh --part 2 --out "$OUT"     # ~5 min: compile cache, matmul peak, looped step, LoRA TTT

(gpu_check.sh installs the .whl/ wheels if the box lacks pydantic/brotli, then runs this file; ``python
bench/gpu_check.py --part N --out DIR`` from the source tree does the same without the wheels.)

Part 1 (240 s): ``environment`` 25 s (versions, GPU, attention backend, the ``varlen_attn`` call, the dtypes that
reach the fused kernels), ``pytest_gpu`` 35 s (``pytest -m gpu`` into pytest.txt), ``muon`` 20 s (Newton–Schulz
per matrix against batched by shape), ``kernels`` 45 s (the MLP up-projection + LeakyReLU² as the Triton kernel,
as the eager math under torch.compile and eager, at 98,304 x 512 -> 2048 bf16; the softcapped CE; every attention
backend), ``train_step`` 115 s (the training loop's own step, compiled, at 98,304 tokens under the preset's dtype
policy, recurrence off: compile seconds, whether ``fullgraph=True`` held, ms/step, tokens/s against the record's
per-GPU rate, peak memory, top kernels; then it saves the compile cache).

Part 2 (300 s): ``compile_cache`` 10 s (loads part 1's cache, says whether it could), ``matmul_peak`` 15 s (a bf16
8192³ matmul: the MFU denominator), ``train_step_looped`` 85 s (the same step with recurrence on),
``ttt_record`` 95 s and ``ttt_frontier`` 95 s (one compiled LoRA TTT chunk step at 64 rows x 2048, and at the
frontier's 64 x 2560 with the n-gram tilt and AsymLogit: compile seconds, ms per step, peak memory). Part 2 adds
the MFU of both train steps (part 1's read from the cache folder's gpu_check_1.json).

Each sub-check runs in its own process (bench/gpu_checks.py), cheapest first, and is killed with its process
group at its deadline: the part's start plus the shares above of every sub-check up to it (scaled to
``--budget``), so time a sub-check leaves unused goes to the next ones and the part never outlasts its budget. A
killed sub-check is recorded as ``"timeout"`` with what it had measured; the next ones still run. After every
sub-check the part rewrites ``--out``'s gpu_check_N.json and summary_N.txt. Files in ``--out``, both parts
together (at most 8 come back from the device tool): gpu_check_1.json, summary_1.txt, pytest.txt,
compile_cache.bin, gpu_check_2.json, summary_2.txt.

The compile cache: part 1's train step writes ``torch.compiler.save_cache_artifacts()`` to ``--cache``
(``.cache/gpu_check/compile_cache.bin``, ignored by git) and a copy to ``--out`` (if at most 16 MiB); part 2
loads it with ``torch.compiler.load_cache_artifacts`` in every sub-check that compiles. ``--out`` cannot carry it
between the calls: the device tool empties $OUT before each command. An ignored folder of the repository is kept
on a machine still warm from the previous call, so ``.cache/gpu_check`` is where part 2 finds it (with inductor's
and Triton's own on-disk caches, kept there too). On a fresh machine part 2 reports that no cache was found; the
$OUT copy that came back can then be put in ``.cache/gpu_check/`` here and sent with the call's ``carry``.

On a machine without CUDA each part is a dry run: every CUDA sub-check is skipped with its reason, the others
run, and the exit status is 0.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pgolf.dist import subprocess_env  # noqa: E402

SKIP_NO_CUDA = "no CUDA device (dry run)"


@dataclass(frozen=True)
class SubCheck:
    name: str
    seconds: float
    """Its share of the part's budget (the hard timeout, plus what the sub-checks before it left unused)."""
    needs_cuda: bool = True
    loads_cache: bool = False
    """Load the compile cache before measuring (part 2)."""


PARTS: dict[int, tuple[SubCheck, ...]] = {
    1: (SubCheck("environment", 25, needs_cuda=False), SubCheck("pytest_gpu", 35, needs_cuda=False),
        SubCheck("muon", 20), SubCheck("kernels", 45), SubCheck("train_step", 115)),
    2: (SubCheck("compile_cache", 10, needs_cuda=False), SubCheck("matmul_peak", 15),
        SubCheck("train_step_looped", 85, loads_cache=True), SubCheck("ttt_record", 95, loads_cache=True),
        SubCheck("ttt_frontier", 95, loads_cache=True)),
}  # fmt: skip


class Part:
    """One part's results, rewritten to ``--out`` (and, for part 1, to the cache folder) after every sub-check."""

    def __init__(self, args: argparse.Namespace, command: str) -> None:
        self.args, self.start = args, time.perf_counter()
        self.cuda = torch.cuda.is_available()
        self.results: dict = {"part": args.part, "command": command, "commit": args.commit or _commit(),
                              "date": datetime.date.today().isoformat(), "cuda": self.cuda,
                              "budget_seconds": args.budget, "cache_dir": str(args.cache), "checks": {}}  # fmt: skip
        args.out.mkdir(parents=True, exist_ok=True)

    def run(self) -> None:
        hang = dict(_hang(spec) for spec in self.args.test_hang)
        subs = PARTS[self.args.part]
        scale = self.args.budget / sum(s.seconds for s in subs)
        deadline = self.start
        with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
            for sub in subs:
                deadline += sub.seconds * scale
                if sub.needs_cuda and not self.cuda and sub.name not in hang:
                    entry = {"status": "skipped", "reason": SKIP_NO_CUDA}
                else:
                    timeout = hang.get(sub.name, max(deadline - time.perf_counter(), 5.0))
                    entry = run_child(sub, timeout, self.args, Path(tmp))
                self.results["checks"][sub.name] = entry
                self.write()
                print(f"[gpu_check {self.args.part}] {sub.name}: {entry['status']} "
                      f"{entry.get('reason', entry.get('error', ''))}"[:300], flush=True)  # fmt: skip
        if self.args.part == 2:
            self.results["compile_cache"] = _cache_state(self.results["checks"]["compile_cache"])
            self.results["mfu"] = mfu(self.results["checks"], self.args.cache / "gpu_check_1.json")
            self.write()

    def write(self) -> None:
        self.results["elapsed_seconds"] = round(time.perf_counter() - self.start, 1)
        text = json.dumps(self.results, indent=2, default=str) + "\n"
        (self.args.out / f"gpu_check_{self.args.part}.json").write_text(text)
        (self.args.out / f"summary_{self.args.part}.txt").write_text(summary(self.results))
        if self.args.part == 1:  # part 2 reads the train step's rate from here (the device tool empties --out)
            self.args.cache.mkdir(parents=True, exist_ok=True)
            (self.args.cache / "gpu_check_1.json").write_text(text)


def run_child(sub: SubCheck, timeout: float, args: argparse.Namespace, tmp: Path) -> dict:
    """Run ``sub`` in its own process group, killed (with every process it started) after ``timeout`` seconds;
    its entry: the child's result, or ``"timeout"`` / ``"error"`` with what it had kept and its log's tail."""
    result, log = tmp / f"{sub.name}.json", tmp / f"{sub.name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", sub.name, "--result", str(result),
           "--out", str(args.out), "--cache", str(args.cache), "--preset", str(args.preset),
           *(["--load-cache"] if sub.loads_cache else []),
           *(f"--test-hang={spec}" for spec in args.test_hang)]  # fmt: skip
    env = subprocess_env(TORCHINDUCTOR_CACHE_DIR=str(args.cache / "inductor"),
                         TRITON_CACHE_DIR=str(args.cache / "triton"), PYTHONUNBUFFERED="1")  # fmt: skip
    began = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc, timed_out = proc.wait(timeout=timeout), False
        except subprocess.TimeoutExpired:
            rc, timed_out = None, True
        with contextlib.suppress(ProcessLookupError):  # also what a finished child left running
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    found = json.loads(result.read_text()) if result.is_file() else {}
    kept = {k: v for k, v in found.items() if k != "status"}
    if timed_out:
        entry = {"status": "timeout", "reason": f"killed at its timeout of {timeout:.0f} s", **kept}
    elif found.get("status") in ("ok", "error"):
        entry = found
    else:
        entry = {"status": "error", "error": f"the sub-check's process exited with {rc} and no result", **kept}
    entry.update(seconds=round(time.perf_counter() - began, 1), timeout_seconds=round(timeout, 1))
    if entry["status"] != "ok":
        entry["log_tail"] = log.read_text(errors="replace")[-3000:]
    return entry


def _hang(spec: str) -> tuple[str, float]:
    name, _, seconds = spec.partition("=")
    return name, float(seconds or 5)


def _cache_state(entry: dict) -> dict:
    """Part 2's headline: whether the compile cache was found and loaded (and why not)."""
    keys = ("found", "loaded", "bytes", "artifacts", "reason")
    state = {k: entry[k] for k in keys if k in entry}
    return state if "loaded" in state else {"loaded": False, "reason": f"compile_cache: {entry['status']}"}


def mfu(checks: dict, part1: Path) -> dict:
    """Model TFLOP/s of the train steps over the 8192³ matmul's: recurrence on from this part, off from part 1's
    results (when part 1 ran on this machine)."""
    peak = checks["matmul_peak"].get("tflops")
    if not peak:
        return {"reason": "no matmul peak"}
    steps = {"recurrence on": checks["train_step_looped"]}
    out: dict = {"matmul_peak_tflops": peak}
    if part1.is_file():
        first = json.loads(part1.read_text())
        steps["recurrence off"] = first["checks"].get("train_step", {})
        out["part1_commit"] = first["commit"]
    for phase, entry in steps.items():
        if "tflops" in entry:
            out[phase] = round(entry["tflops"] / peak, 4)
    return out


def summary(results: dict) -> str:
    lines = [f"gpu_check part {results['part']} {results['date']} commit {results['commit']} "
             f"({results.get('elapsed_seconds', 0)} s of {results['budget_seconds']:.0f})",
             f"command: {results['command']}"]  # fmt: skip
    for name, entry in results["checks"].items():
        head = f"- {name}: {entry['status']}"
        if "seconds" in entry:
            head += f" in {entry['seconds']} s (timeout {entry['timeout_seconds']} s)"
        if entry["status"] != "ok":
            lines.append(f"{head} ({entry.get('reason') or entry.get('error')})")
            continue
        lines.append(head)
        lines += [f"    {line}" for line in entry.get("summary", [])]
    if "mfu" in results:
        lines.append(f"MFU against the 8192³ matmul: {results['mfu']}")
    return "\n".join(lines) + "\n"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", type=int, choices=sorted(PARTS), help="1 or 2 (module docstring)")
    parser.add_argument("--out", required=True, type=Path, help="folder for the results (at most 8 files)")
    parser.add_argument("--preset", default=ROOT / "presets" / "record_1855.yaml", type=Path)
    parser.add_argument("--budget", type=float, help="seconds for the part's sub-checks (default: 240 / 300)")
    parser.add_argument("--commit", default=None, help="the commit being checked (default: git rev-parse HEAD)")
    parser.add_argument("--cache", default=ROOT / ".cache" / "gpu_check", type=Path,
                        help="where part 1 leaves the compile cache for part 2 (.cache/gpu_check)")  # fmt: skip
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--load-cache", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--test-hang", action="append", default=[], metavar="NAME=SECONDS", help=argparse.SUPPRESS)
    # --test-hang is for tests only: sub-check NAME sleeps instead of measuring (even without CUDA) and is killed
    # after SECONDS, which tests the timeout.
    args = parser.parse_args(argv)
    if args.child is None and args.part is None:
        parser.error("--part is required (1 or 2)")
    if args.budget is None and args.part is not None:
        args.budget = float(sum(s.seconds for s in PARTS[args.part]))
    args.out, args.cache = args.out.resolve(), args.cache.resolve()
    return args


def main() -> None:
    args = parse_args()
    if args.child is not None:
        from bench.gpu_checks import child_main

        args.test_hang = any(_hang(spec)[0] == args.child for spec in args.test_hang)
        child_main(args)
        return
    part = Part(args, " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    part.run()
    print(summary(part.results))


if __name__ == "__main__":
    main()
