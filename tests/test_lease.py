"""The device lease (pgolf/lease.py), on the CPU with a simulated device count (``PGOLF_LEASE_DEVICES``): concurrent
processes (forked, so no torch import each) get distinct devices, wait for a holder to exit, never double-book; a
killed holder frees its device; N-device requests take all N or none; the command-line prefix hands the devices
(``CUDA_VISIBLE_DEVICES``) and the locks to the command it execs; nothing happens without ``PGOLF_LEASE_DIR``; CPU
slots set torch threads. The accelerator stages take the lease first thing in ``main``."""

from __future__ import annotations

import ast
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pgolf import lease
from pgolf.errors import PgolfError

ROOT = Path(__file__).resolve().parents[1]
FORK = multiprocessing.get_context("fork")
POLL = 0.02
HOLD = 0.6


@pytest.fixture
def lease_env(tmp_path, monkeypatch):
    """Leasing on, in a fresh folder, over 2 simulated devices (forked children inherit it)."""
    for name in lease.dist.LEASE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("PGOLF_LEASE_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "2")
    yield tmp_path
    for proc in multiprocessing.active_children():  # a failed test's workers still waiting or holding
        proc.kill()
        proc.join()


def _hold(out: Path, num: int, seconds: float) -> None:
    """A worker: lease ``num`` devices, hold them ``seconds``, record what it saw (written before it exits)."""
    torch.set_num_threads(len(os.sched_getaffinity(0)) + 1)  # no share's value: the lease must set it
    held = lease.acquire(num, poll_seconds=POLL)
    start = time.monotonic()
    time.sleep(seconds)
    record = {"ids": list(held.ids), "cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": start,
              "end": time.monotonic(), "threads": torch.get_num_threads(),
              "omp": os.environ.get("OMP_NUM_THREADS")}  # fmt: skip
    out.write_text(json.dumps(record))


def _start(tmp_path: Path, name: str, num: int = 1, seconds: float = HOLD) -> multiprocessing.Process:
    proc = FORK.Process(target=_hold, args=(tmp_path / f"{name}.json", num, seconds), daemon=True)
    proc.start()
    return proc


def _finish(tmp_path: Path, procs: dict[str, multiprocessing.Process], timeout: float = 10.0) -> dict[str, dict]:
    for proc in procs.values():
        proc.join(timeout)
        assert proc.exitcode == 0, proc
    return {name: json.loads((tmp_path / f"{name}.json").read_text()) for name in procs}


def _assert_no_overlap(records: dict[str, dict]) -> None:
    """Per device, the holders' intervals are disjoint."""
    by_device: dict[str, list[tuple[float, float]]] = {}
    for r in records.values():
        for one in r["ids"]:
            by_device.setdefault(one, []).append((r["start"], r["end"]))
    for spans in by_device.values():
        spans.sort()
        assert all(a_end <= b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)), spans


def test_four_workers_share_two_devices_without_double_booking(lease_env, capfd):
    launch = time.monotonic()
    procs = {f"w{i}": _start(lease_env, f"w{i}") for i in range(4)}
    records = _finish(lease_env, procs)
    assert {one for r in records.values() for one in r["ids"]} == {"0", "1"}
    assert all(r["cvd"] == r["ids"][0] for r in records.values())  # CUDA_VISIBLE_DEVICES is the leased device
    _assert_no_overlap(records)
    waited = sorted(r["start"] - launch for r in records.values())
    assert waited[1] < HOLD <= waited[2], waited  # two start at once, two after a holder exits
    err = capfd.readouterr().err
    assert err.count("lease: waiting for 1 of 2 devices (held: ") == 2, err  # once per waiting worker
    pids = {str(p.pid) for p in procs.values()}
    assert any(f"by pid {pid}" in err for pid in pids), err  # the holder named by its pid


def test_a_killed_holder_frees_its_device(lease_env, monkeypatch):
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "1")
    holder = _start(lease_env, "holder", seconds=60)
    lock = lease_env / "leases" / "device-0.lock"
    deadline = time.monotonic() + 10
    while not (lock.exists() and lock.read_text().strip() == str(holder.pid)) and time.monotonic() < deadline:
        time.sleep(POLL)
    waiter = _start(lease_env, "waiter", seconds=0)
    time.sleep(0.3)
    assert waiter.is_alive()  # waits while the holder lives
    os.kill(holder.pid, signal.SIGKILL)
    holder.join()
    records = _finish(lease_env, {"waiter": waiter}, timeout=5)
    assert records["waiter"]["ids"] == ["0"]


def test_n_devices_are_taken_together_or_waited_for(lease_env, monkeypatch):
    """Three devices: one busy, a request for 2 takes the other 2 at once; a second request for 2 waits until
    2 are free together, however long the first single device has been free."""
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "3")
    launch = time.monotonic()
    procs = {"one": _start(lease_env, "one", 1, HOLD)}
    time.sleep(0.1)
    procs["pair"] = _start(lease_env, "pair", 2, 2 * HOLD)
    time.sleep(0.1)
    procs["late"] = _start(lease_env, "late", 2, 0.1)
    records = _finish(lease_env, procs)
    assert records["one"]["ids"] == ["0"] and records["pair"]["ids"] == ["1", "2"]
    assert records["pair"]["start"] - launch < HOLD  # 2 of 3 free: no wait
    assert records["late"]["start"] >= records["pair"]["end"]  # device 0 alone was not enough
    assert records["late"]["cvd"] == ",".join(records["late"]["ids"])
    _assert_no_overlap(records)


def test_a_waiting_n_request_holds_nothing(lease_env, monkeypatch):
    """While a request for all 3 devices waits on a busy one, the other two stay free for others; two requests
    for 2 of 2 never deadlock."""
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "3")
    procs = {"busy": _start(lease_env, "busy", 1, 2 * HOLD)}
    time.sleep(0.1)
    procs["all"] = _start(lease_env, "all", 3, 0.1)
    time.sleep(0.2)
    launch = time.monotonic()
    procs["probe"] = _start(lease_env, "probe", 2, 0.1)
    records = _finish(lease_env, procs)
    assert records["probe"]["start"] - launch < HOLD  # devices 1, 2 were free while "all" waited
    assert records["all"]["start"] >= records["busy"]["end"]
    _assert_no_overlap(records)
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "2")
    pairs = {f"p{i}": _start(lease_env, f"p{i}", 2, 0.2) for i in range(2)}
    _assert_no_overlap(_finish(lease_env, pairs))


def test_the_prefix_execs_the_command_with_the_devices_and_the_locks(lease_env):
    """``python -m pgolf.lease -n 2 -- CMD``: CMD (same pid) sees CUDA_VISIBLE_DEVICES and PGOLF_LEASE_HELD (so its
    stages take nothing) and holds the locks until it exits."""
    code = ("import os, time; print(os.getpid(), os.environ['CUDA_VISIBLE_DEVICES'], os.environ['PGOLF_LEASE_HELD'],"
            " flush=True); time.sleep(60)")  # fmt: skip
    cmd = [sys.executable, "-m", "pgolf.lease", "-n", "2", "--", sys.executable, "-c", code]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        pid, visible, held = proc.stdout.readline().split()
        assert (int(pid), visible, held) == (proc.pid, "0,1", "0,1")
        assert (lease_env / "leases" / "device-1.lock").read_text().strip() == pid
        waiter = _start(lease_env, "waiter", 1, 0)
        time.sleep(0.3)
        assert waiter.is_alive()  # the exec'd command holds the devices
    finally:
        proc.kill()
        proc.wait()
    _finish(lease_env, {"waiter": waiter}, timeout=5)


def test_nothing_happens_without_a_lease_folder_or_under_a_held_lease(lease_env, monkeypatch):
    monkeypatch.delenv("PGOLF_LEASE_DIR")
    assert lease.acquire(1) is None
    assert "CUDA_VISIBLE_DEVICES" not in os.environ and not (lease_env / "leases").exists()
    monkeypatch.setenv("PGOLF_LEASE_DIR", str(lease_env / "leases"))
    monkeypatch.setenv("PGOLF_LEASE_HELD", "0")
    assert lease.acquire(1) is None and "CUDA_VISIBLE_DEVICES" not in os.environ


def test_a_torchrun_rank_without_the_prefix_refuses(lease_env, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(PgolfError, match="python -m pgolf.lease -n"):
        lease.acquire(1)


def test_cpu_slots_set_torch_threads(lease_env, monkeypatch):
    monkeypatch.setenv("PGOLF_LEASE_DEVICES", "0")
    monkeypatch.setenv("PGOLF_LEASE_SLOTS", "2")
    launch = time.monotonic()
    procs = {f"c{i}": _start(lease_env, f"c{i}", 1, HOLD) for i in range(3)}
    records = _finish(lease_env, procs)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert all(r["threads"] == share and r["omp"] == str(share) for r in records.values())
    assert all(r["cvd"] is None for r in records.values())  # no device leased on the CPU
    assert sorted(r["start"] - launch for r in records.values())[2] >= HOLD  # the third waits for a slot
    _assert_no_overlap(records)


def test_the_pool_is_the_simulated_count_or_the_visible_devices():
    assert lease.device_pool({"PGOLF_LEASE_DEVICES": "3"}) == ["0", "1", "2"]
    assert lease.device_pool({"CUDA_VISIBLE_DEVICES": "4,6"}) == ["4", "6"]
    assert lease.device_pool({"CUDA_VISIBLE_DEVICES": ""}) == []
    with pytest.raises(PgolfError, match="PGOLF_LEASE_DEVICES"):
        lease.device_pool({"PGOLF_LEASE_DEVICES": "two"})


@pytest.mark.parametrize("stage", ["train", "evaluate", "quantize", "calibrate"])
def test_accelerator_stages_take_the_lease_before_anything_else(stage):
    """The lease's first statement of ``main`` after the command line: nothing has touched CUDA yet."""
    tree = ast.parse((ROOT / "stages" / f"{stage}.py").read_text())
    main = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "main")
    calls = [ast.unparse(s) for s in main.body[:2]]
    assert calls[0].startswith("paths = parse_paths(") and calls[1] == "take_lease(1)", calls
