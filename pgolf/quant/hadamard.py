"""Hadamard rotation of a weight's input space before GPTQ (incoherence processing).

With Q the normalized Sylvester Walsh-Hadamard matrix (orthonormal and symmetric), y = W x = (W Q^T)(Q x), so GPTQ
can run on W' = W Q^T with the Hessian H' = Q H Q^T, and the dequantized Ŵ' is mapped back by Ŵ = Ŵ' Q at load
time (no runtime cost). Rotation spreads outlier columns over all columns, making rows closer to Gaussian before the
per-row SDClip.

References:
    QuIP# (Tseng et al. 2024), QuaRot (Ashkboos et al. 2024); parameter-golf PR #2143 (HADAMARD_ROTATE=1).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor


@lru_cache(maxsize=8)
def _sylvester(n: int) -> Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], dim=1), torch.cat([h, -h], dim=1)], dim=0)
    return (h / math.sqrt(n)).to(torch.float32)


def hadamard_matrix(n: int) -> Tensor:
    """The normalized Sylvester Hadamard matrix of size n (fp32, Q Q^T = I, Q = Q^T); n must be a power of 2."""
    if n < 1 or n & (n - 1):
        raise ValueError(f"Hadamard rotation needs a power-of-2 size, got {n}")
    return _sylvester(n).clone()


def _check_cols(x: Tensor, what: str) -> int:
    if x.ndim != 2:
        raise ValueError(f"{what} must be 2-D, got shape {tuple(x.shape)}")
    return x.shape[1]


def rotate_weight(w: Tensor) -> Tensor:
    """W' = W Q^T (fp32), with Q of size in_features = w.shape[1]."""
    q = hadamard_matrix(_check_cols(w, "weight"))
    return w.float() @ q.T


def rotate_hessian(h: Tensor) -> Tensor:
    """H' = Q H Q^T (fp32), the Hessian of the rotated inputs Q x."""
    q = hadamard_matrix(_check_cols(h, "Hessian"))
    return q @ h.float() @ q.T


def unrotate_weight(w_rot: Tensor) -> Tensor:
    """W = W' Q (fp32), undoing rotate_weight."""
    q = hadamard_matrix(_check_cols(w_rot, "rotated weight"))
    return w_rot.float() @ q
