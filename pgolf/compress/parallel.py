"""One stream per worker: the independent codec calls of :mod:`pgolf.compress.pergroup` on a thread pool.

Threads, not processes, because the work that takes the time already runs outside the interpreter lock: ``lrzip``
is a child process the thread only waits on, brotli, lzma and zstd release the lock inside their C cores, and the
similarity sort spends its time in large torch reductions. Threads also need no pickling of the groups, no import
of torch in every worker and no ``fork`` of a process that holds CUDA or torch's thread pool (the evaluate stage
decodes model.bin on the GPU box). The range-ANS coder (``constriction``) keeps the lock, so its groups gain
nothing; they take about two seconds at record size in all.

Results come back in submission order, so the streams, and the bytes of model.bin, are those of the serial loop
whatever the number of workers. When jobs raise, the caller gets the exception of the first failing one in
submission order (the one the serial loop would raise: the codec's own error and traceback, unchanged), and the
jobs not yet started are cancelled.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask, which a container or ``taskset`` can narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def default_workers(jobs: int) -> int:
    """One worker per job, at most one per available CPU."""
    return max(1, min(jobs, available_cpus()))


def run_all(jobs: Sequence[Callable[[], T]], workers: int | None = None) -> list[T]:
    """``[job() for job in jobs]``, on ``workers`` threads (None: :func:`default_workers`; 1: this thread)."""
    count = default_workers(len(jobs)) if workers is None else min(workers, len(jobs))
    if count <= 1:
        return [job() for job in jobs]
    with ThreadPoolExecutor(count, thread_name_prefix="pgolf-codec") as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            return [f.result() for f in futures]
        except BaseException:
            for f in futures:
                f.cancel()
            raise
