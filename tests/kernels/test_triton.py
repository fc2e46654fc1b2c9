"""The Triton kernels (pgolf/kernels/_triton.py behind both fused ops) against their eager references on CPU,
through Triton's interpreter. TRITON_INTERPRET is read when a kernel is decorated, and another test may already
have imported the kernels in this process, so the interpreted checks run in a fresh Python with the variable
set."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.common import ROOT

pytest.importorskip("triton")


_PRELUDE = f"""
import sys
sys.path.insert(0, {str(ROOT)!r})  # the repository root: tests.helpers
import torch
from tests.helpers.kernels import TOL, check_autotuned, check_ce, check_compiled, check_grouped_order, check_mlp
from tests.helpers.kernels import check_saved, check_wide
"""
_KERNELS = """
for dtype in (torch.float32, torch.float64):
    for slope in (0.5, 0.3, 0.0):
        check_mlp((3, 7, 20), 37, slope, dtype, "cpu", (16, 16, 16, 2), TOL[dtype])  # M=21, N=37, K=20: ragged
    check_ce(13, 100, dtype, "cpu", 32, TOL[dtype])  # V=100 over blocks of 32
check_compiled()
check_wide()
"""
_GROUPED = """
check_grouped_order()
for dtype in (torch.float32, torch.float64):
    # M=95 (6 row tiles), N=70 (5), K=20 (2): GROUP_M 4 leaves a group of 2 rows forward (of 1 for dW's 5 rows)
    check_mlp((5, 19, 20), 70, 0.3, dtype, "cpu", (16, 16, 16, 4), TOL[dtype])
check_saved()
"""
_AUTOTUNED = """
check_autotuned()
"""


def _interpreter_broken() -> bool:
    """Triton < 3.6's interpreter converts 1-element arrays to Python scalars, which NumPy >= 2.4 refuses (a
    test-only problem: compiled kernels never run the interpreter)."""
    import numpy as np
    import triton

    def version(text: str) -> tuple[int, int]:
        major, minor = text.split(".")[:2]
        return int(major), int(minor)

    return version(triton.__version__) < (3, 6) and version(np.__version__) >= (2, 4)


@pytest.mark.slow
@pytest.mark.skipif(_interpreter_broken(), reason="Triton < 3.6's interpreter fails on NumPy >= 2.4")
def test_kernels_match_eager_under_the_interpreter():
    """Forward and backward of both kernels, float32 and float64, ragged shapes, in Triton's CPU interpreter; the
    custom ops under opcheck and torch.compile."""
    _interpret(_KERNELS)


@pytest.mark.slow
@pytest.mark.skipif(_interpreter_broken(), reason="Triton < 3.6's interpreter fails on NumPy >= 2.4")
def test_grouped_tiles_and_fused_backward_under_the_interpreter():
    """The matmul's programs take the tiles in grouped order (GROUP_M not dividing the row tiles); the MLP's
    forward and its phi'-fused backward over several row and column tiles match eager; the forward saves x, W and
    pre only."""
    _interpret(_GROUPED)


@pytest.mark.slow
@pytest.mark.skipif(_interpreter_broken(), reason="Triton < 3.6's interpreter fails on NumPy >= 2.4")
def test_autotuned_mlp_matches_eager_under_the_interpreter():
    """Every autotune config's tiles and the autotuned kernel (the CUDA default) give the eager forward and
    gradients."""
    _interpret(_AUTOTUNED)


def _interpret(script: str) -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    here = Path(__file__).resolve().parent
    code = _PRELUDE + script + "print('ok')\n"
    run = subprocess.run([sys.executable, "-c", code], cwd=here, env=env, capture_output=True, text=True)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]
