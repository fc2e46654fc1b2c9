"""bench/gpu_check.sh's two parts on a machine without CUDA: dry runs that skip every CUDA sub-check with its reason
and exit 0 within a minute, at most 8 files in ``--out`` between them (what the device tool brings back), a hung
sub-check killed with its process group at its timeout while the next ones still run, and part 2 saying whether
it loaded part 1's compile cache. On a GPU the same commands are the real check (minutes), run by hand."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers.common import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU this is the real check (minutes), run by hand"),
]

PART1 = ["environment", "pytest_gpu", "muon", "kernels", "train_step"]
PART2 = ["compile_cache", "matmul_peak", "train_step_looped", "ttt_record", "ttt_frontier"]
DRY = {"status": "skipped", "reason": "no CUDA device (dry run)"}

SAVE_A_CACHE = """
import sys, json, torch
from pathlib import Path
from bench.gpu_checks import Context, save_compile_cache
torch.compile(lambda x: (x * 2).sin())(torch.randn(8))
out, cache = Path(sys.argv[1]), Path(sys.argv[2])
print(json.dumps(save_compile_cache(Context(Path("p"), out, cache, cache / "r.json", torch.device("cpu")))))
"""


def gpu_check(out: Path, cache: Path, *args: str) -> tuple[dict, float]:
    """Run one part through bench/gpu_check.sh; (its results, its seconds)."""
    env = {**os.environ, "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "bench" / "gpu_check.sh"), "--out", str(out), "--cache", str(cache), "--commit", "test"]
    start = time.perf_counter()
    run = subprocess.run([*cmd, *args], cwd=out.parent, env=env, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    assert run.returncode == 0, run.stderr[-3000:]
    part = args[args.index("--part") + 1]
    return json.loads((out / f"gpu_check_{part}.json").read_text()), seconds


@pytest.fixture(scope="module")
def both_parts(tmp_path_factory):
    """Part 1, then a compile cache saved as part 1's train step saves it (from a tiny CPU compile: the dry run
    compiles nothing), then part 2, all into one ``--out``."""
    base = tmp_path_factory.mktemp("gpu_check")
    out, cache = base / "out", base / "cache"
    first = gpu_check(out, cache, "--part", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHINDUCTOR_CACHE_DIR": str(base / "inductor")}
    saved = subprocess.run([sys.executable, "-c", SAVE_A_CACHE, str(out), str(cache)], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)  # fmt: skip
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert json.loads(saved.stdout.splitlines()[-1])["saved"]
    return out, first, gpu_check(out, cache, "--part", "2")


def test_part1_is_a_fast_clean_dry_run(both_parts):
    out, (results, seconds), _ = both_parts
    checks = results["checks"]
    assert list(checks) == PART1
    assert checks["environment"]["status"] == "ok" and checks["environment"]["torch"] == torch.__version__
    assert checks["pytest_gpu"]["status"] == "ok" and checks["pytest_gpu"]["returncode"] == 0
    for name in ("muon", "kernels", "train_step"):
        assert checks[name] == DRY, name
    assert results["commit"] == "test" and "gpu_check.py --out" in results["command"] and results["part"] == 1
    assert seconds < 60, f"part 1's dry run took {seconds:.0f} s"
    assert "skipped (no CUDA device (dry run))" in (out / "summary_1.txt").read_text()


def test_part2_is_a_fast_clean_dry_run_that_loads_the_cache(both_parts):
    out, _, (results, seconds) = both_parts
    checks = results["checks"]
    assert list(checks) == PART2
    for name in PART2[1:]:
        assert checks[name] == DRY, name
    assert checks["compile_cache"]["status"] == "ok"
    assert results["compile_cache"]["found"] and results["compile_cache"]["loaded"], results["compile_cache"]
    assert results["compile_cache"]["artifacts"], results["compile_cache"]
    assert seconds < 60, f"part 2's dry run took {seconds:.0f} s"
    assert "compile cache: loaded" in (out / "summary_2.txt").read_text()


def test_both_parts_leave_at_most_8_files(both_parts):
    out = both_parts[0]
    files = sorted(p.name for p in out.rglob("*"))
    assert files == ["compile_cache.bin", "gpu_check_1.json", "gpu_check_2.json", "pytest.txt", "summary_1.txt",
                     "summary_2.txt"]  # fmt: skip
    assert len(files) <= 8  # the device tool brings back at most 8 files from $OUT


@pytest.mark.parametrize("cache", [None, b"not a compile cache"], ids=["missing", "corrupt"])
def test_part2_says_when_no_cache_was_loaded(tmp_path, cache):
    out, cache_dir = tmp_path / "out", tmp_path / "cache"
    if cache is not None:
        cache_dir.mkdir()
        (cache_dir / "compile_cache.bin").write_bytes(cache)
    results, _ = gpu_check(out, cache_dir, "--part", "2")
    state = results["compile_cache"]
    assert state["loaded"] is False and state["found"] is (cache is not None)
    assert ("no compile cache at" if cache is None else "refused it") in state["reason"]


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie nobody reaped counts as ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] != "Z"


def test_a_hung_subcheck_is_killed_at_its_timeout_and_the_next_ones_run(tmp_path):
    out = tmp_path / "out"
    results, _ = gpu_check(out, tmp_path / "cache", "--part", "1", "--test-hang", "environment=3")
    hung = results["checks"]["environment"]
    assert hung["status"] == "timeout" and hung["timeout_seconds"] == 3 and hung["seconds"] < 15, hung
    assert not _alive(hung["pid"]) and not _alive(hung["grandchild_pid"])  # its whole process group is gone
    assert results["checks"]["pytest_gpu"]["status"] == "ok"
    assert [results["checks"][name] for name in PART1[2:]] == [DRY] * 3
    assert "environment: timeout" in (out / "summary_1.txt").read_text()
