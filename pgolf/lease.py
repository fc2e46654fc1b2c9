"""A device lease, so that the workers of ``dvc queue start -j N`` on one box do not all compute on GPU 0 (or all on
every CPU core).

DVC gives its queue workers no device of their own (its request #4586 was closed; ``dvc machine`` is gone), so a
stage takes one itself: :func:`acquire` locks the lowest free device(s) of a pool shared through lock files in one
folder (``<dir>/device-<id>.lock``, or ``<dir>/cpu-<slot>.lock``), each held by ``flock`` on a file descriptor that
is never closed: the kernel releases it when the process ends, so a killed worker leaks nothing. The holder's pid
is written into its lock file, for the one-line message of a process that waits. A request for N devices takes all
N at once or none (a partial set held while waiting would deadlock two N=2 requests); it polls until it can.

What it sets:

* devices: ``CUDA_VISIBLE_DEVICES`` for this process and its children, before anything touches CUDA (each stage's
  ``main`` calls :func:`acquire` first). The pool: ``PGOLF_LEASE_DEVICES`` ids 0..N-1 when set (tests simulate
  devices with it; set it on a GPU box to skip the count), else the ``CUDA_VISIBLE_DEVICES`` already set, else
  ``torch.cuda.device_count()`` counted in a child process: it uses NVML where it can, but falls back to
  ``cudaGetDeviceCount``, which would fix this process's device list before the lease narrows it.
* no device (a CPU box, or ``PGOLF_LEASE_DEVICES=0``): one of ``PGOLF_LEASE_SLOTS`` (default 1) slots, and torch
  threads (and ``OMP_NUM_THREADS`` for children) at the slot's share of the cores. One slot runs the queue's jobs one
  at a time, each with every core; two jobs on all cores of a 2-core box each take about ten times longer.

Under torchrun the ranks are children of the launcher, which no stage can hook: the lease is taken once, by a prefix
of ``train.launcher`` (``python -m pgolf.lease -n 8 -- torchrun --standalone --nproc_per_node=8``), which execs the
launcher holding the lock files; the ranks see ``PGOLF_LEASE_HELD`` and take nothing. A rank without it refuses to
run (each would lease its own device).

Why the environment and not params.yaml (the issue's ``train.devices: auto``): where a job runs does not change
what it computes, and a params key would. It enters ``dvc.lock`` and the run cache, so moving a run to another GPU,
or turning the lease on, would re-run it, and a result computed on GPU 3 would not be found for a run on GPU 0.
``PGOLF_LEASE_DIR`` unset (the default) means no lease: everything runs as before. The one params cost is the
torchrun prefix, since ``train.launcher`` is a param; single-process stages need no prefix.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pgolf import dist
from pgolf.cli import Parser, run
from pgolf.errors import PgolfError

POLL_SECONDS = 0.5
NAMES = {"device": "devices", "cpu": "CPU slots"}


@dataclass(frozen=True)
class Lease:
    """What a process holds: ``kind`` ("device" or "cpu"), the ids, and the locked file descriptors."""

    kind: str
    ids: tuple[str, ...]
    fds: tuple[int, ...]  # never closed: the kernel releases the locks when the process ends


def _number(env: dict[str, str], name: str, default: int | None) -> int | None:
    if name not in env:
        return default
    try:
        value = int(env[name])
    except ValueError:
        value = -1
    if value < 0:
        raise PgolfError(f"lease: {name}={env[name]!r} is not a count (0, 1, 2, ...)")
    return value


def _count_cuda_devices() -> int:
    """torch's device count, in a child process so that this one's CUDA is still untouched (module docstring)."""
    if not torch.backends.cuda.is_built():
        return 0
    code = "import torch; print(torch.cuda.device_count())"
    return int(subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout)


def device_pool(env: dict[str, str]) -> list[str]:
    """The device ids to lease from (module docstring): ``PGOLF_LEASE_DEVICES``, the visible devices, or torch's."""
    visible = [d for d in env["CUDA_VISIBLE_DEVICES"].split(",") if d] if "CUDA_VISIBLE_DEVICES" in env else None
    count = _number(env, "PGOLF_LEASE_DEVICES", None)
    if count is None:
        count = len(visible) if visible is not None else _count_cuda_devices()
    return visible[:count] if visible else [str(i) for i in range(count)]


def _holder(folder: Path, kind: str, one: str) -> str:
    try:
        return (folder / f"{kind}-{one}.lock").read_text().strip() or "?"
    except OSError:
        return "?"


def _try_take(folder: Path, kind: str, ids: list[str], num: int) -> tuple[dict[str, int] | None, list[str]]:
    """Lock the lowest ``num`` free ids, writing our pid into each: ({id: fd}, all of them or None; the ids found
    held by others)."""
    fds: dict[str, int] = {}
    busy = []
    for one in ids:
        fd = os.open(folder / f"{kind}-{one}.lock", os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            busy.append(one)
            continue
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        fds[one] = fd
        if len(fds) == num:
            return fds, busy
    for fd in fds.values():  # too few free: hold none while waiting
        os.close(fd)
    return None, busy


def take(folder: Path, kind: str, ids: list[str], num: int, poll_seconds: float = POLL_SECONDS) -> Lease:
    """Wait until ``num`` of ``ids`` are free together and lock them; says once that it waits, and for whom."""
    if not 1 <= num <= len(ids):
        raise PgolfError(f"lease: {num} {NAMES[kind]} asked for, the pool has {len(ids)} ({', '.join(ids) or 'none'})")
    folder.mkdir(parents=True, exist_ok=True)
    waited = None
    while True:
        fds, busy = _try_take(folder, kind, ids, num)
        if fds is not None:
            break
        if waited is None:
            waited = time.monotonic()
            held = ", ".join(f"{one} by pid {_holder(folder, kind, one)}" for one in busy)
            print(f"lease: waiting for {num} of {len(ids)} {NAMES[kind]} (held: {held})", file=sys.stderr, flush=True)
        time.sleep(poll_seconds * random.uniform(0.5, 1.5))  # jitter: two N-requests do not retry in step
    after = "" if waited is None else f" after {time.monotonic() - waited:.1f} s"
    print(f"lease: pid {os.getpid()} holds {NAMES[kind]} {','.join(fds)} of {len(ids)}{after}", file=sys.stderr,
          flush=True)  # fmt: skip
    return Lease(kind, tuple(fds), tuple(fds.values()))


def cpu_share(folder: Path, slots: int, poll_seconds: float = POLL_SECONDS) -> Lease:
    """One of ``slots`` CPU slots; torch threads (and children's ``OMP_NUM_THREADS``) at its share of the cores."""
    lease = take(folder, "cpu", [str(i) for i in range(max(slots, 1))], 1, poll_seconds)
    threads = max(1, len(os.sched_getaffinity(0)) // max(slots, 1))
    torch.set_num_threads(threads)
    dist.export_environment(OMP_NUM_THREADS=str(threads))
    return lease


def acquire(num_devices: int = 1, poll_seconds: float = POLL_SECONDS) -> Lease | None:
    """Lease ``num_devices`` devices (a CPU slot on a box without any) when ``PGOLF_LEASE_DIR`` is set, and make
    them this process's and its children's; None, doing nothing, when it is unset or an ancestor holds the lease.
    Call it before anything touches CUDA."""
    env = dist.lease_environment()
    if not env.get("PGOLF_LEASE_DIR") or "PGOLF_LEASE_HELD" in env:
        return None
    if "LOCAL_RANK" in env:
        raise PgolfError("lease: a torchrun rank cannot take the device lease (each rank would take its own); "
                         "take it once in the launcher: train.launcher: python -m pgolf.lease -n <nproc> -- "
                         "torchrun ...")  # fmt: skip
    folder = Path(env["PGOLF_LEASE_DIR"])
    pool = device_pool(env)
    if pool:
        lease = take(folder, "device", pool, num_devices, poll_seconds)
        dist.export_environment(CUDA_VISIBLE_DEVICES=",".join(lease.ids))
    else:
        lease = cpu_share(folder, _number(env, "PGOLF_LEASE_SLOTS", 1) or 1, poll_seconds)
    dist.export_environment(PGOLF_LEASE_HELD=",".join(lease.ids))
    return lease


def main(argv: list[str] | None = None) -> None:
    usage = "take the device lease (when PGOLF_LEASE_DIR is set), then exec COMMAND holding it"
    parser = Parser(description=f"{usage}: python -m pgolf.lease -n 8 -- torchrun --standalone --nproc_per_node=8")
    parser.add_argument("-n", "--devices", type=int, default=1, help="devices to lease together (default 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command to run, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command to run after --")
    lease = acquire(args.devices)
    for fd in lease.fds if lease else ():
        os.set_inheritable(fd, True)  # exec keeps the locks: the command holds them for its life
    os.execvp(command[0], command)


if __name__ == "__main__":
    run(main)
