"""GPTQ's upper factor of H^-1: the record's chol(H) -> H^-1 -> chol(H^-1) against one reverse Cholesky
(#2054, ``quantize.inverse``), on random SPD matrices, in one run.

    python bench/gptq_inverse.py                        # 512 and 2048, fp32, on CUDA when there is one
    python bench/gptq_inverse.py --sizes 512 2048 4096 --no-results
    python bench/gptq_inverse.py --threads 1             # CPU: one thread (a shared machine distorts more)

H = X^T X / n + 0.01 mean(diag) I for Gaussian X with correlated columns (n = 2 x size rows), in fp32 like the
quantize stage. Both methods alternate within each round, so that machine noise hits both alike; the median ms
per factor of each, their ratio and the relative difference of the two factors are reported.
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
from pgolf.quant.gptq import inverse_upper_factor  # noqa: E402

METHODS = ("cholesky", "reverse_cholesky")


def spd_matrix(size: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A damped fp32 Hessian-like SPD matrix of ``size`` x ``size``."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(size, size, generator=g) / size**0.5 + 0.1 * torch.eye(size)
    x = torch.randn(2 * size, size, generator=g) @ mix
    h = x.T @ x / x.shape[0]
    h.diagonal().add_(0.01 * h.diagonal().mean())
    return h.to(device)


def time_methods(h: torch.Tensor, rounds: int, reps: int) -> dict[str, float]:
    """Median ms per factor of each method."""
    sync = torch.cuda.synchronize if h.is_cuda else lambda: None
    for method in METHODS:  # warm-up (library handles, workspaces)
        inverse_upper_factor(h, method)
    times: dict[str, list[float]] = {m: [] for m in METHODS}
    for _ in range(rounds):
        for method in METHODS:
            sync()
            start = time.perf_counter()
            for _ in range(reps):
                inverse_upper_factor(h, method)
            sync()
            times[method].append((time.perf_counter() - start) / reps * 1000)
    return {m: statistics.median(t) for m, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=3, help="factors per round and method")
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"))
    parser.add_argument("--no-results", action="store_true", help="print only, do not append to the results file")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    for size in args.sizes:
        h = spd_matrix(size, device)
        medians = time_methods(h, args.rounds, args.reps)
        u, r = (inverse_upper_factor(h, m).double() for m in METHODS)
        diff = float((u - r).norm() / u.norm())
        rows.append(f"| {size} | {medians['cholesky']:.2f} | {medians['reverse_cholesky']:.2f} | "
                    f"{medians['cholesky'] / medians['reverse_cholesky']:.2f}x | {diff:.1e} |")  # fmt: skip
    command = " ".join(["python", "bench/gptq_inverse.py", *sys.argv[1:]])
    lines = [f"## {datetime.date.today()} GPTQ H^-1 factor: cholesky vs reverse_cholesky ({device_name(device)})", "",
             f"`{command}`  ", f"fp32, median of {args.rounds} rounds x {args.reps}", "",
             "| size | cholesky ms | reverse_cholesky ms | speed-up | rel. factor difference |",
             "|---:|---:|---:|---:|---:|", *rows, ""]  # fmt: skip
    if args.no_results:
        print("\n".join(lines))
    else:
        publish(lines, args.results)


if __name__ == "__main__":
    main()
