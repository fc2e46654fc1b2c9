"""Muon: momentum SGD whose update is orthogonalized by a Newton–Schulz iteration, for 2-D hidden matrices.

Per matrix (``muon_update``): momentum, optional Nesterov, optional per-row L2 normalization, Newton–Schulz
orthogonalization (Polar-Express or classic coefficients) and the shape scale ``sqrt(max(1, rows/cols))``.
``Muon`` applies it with decoupled weight decay ``p <- p (1 - lr wd) - lr update``. One class serves 1 and N
ranks: with a process group of more than one rank, parameter i is owned by rank ``i % world_size``, which keeps its
momentum buffer and computes its update; the updates of each (group, shape, dtype) reach every rank in one
``all_gather``. Without a process group
(or with one rank) everything runs locally and no communication happens.

References:
    * K. Jordan et al., "Muon: An optimizer for hidden layers in neural networks" (2024),
      https://kellerjordan.github.io/posts/muon/ and KellerJordan/Muon ``muon.py`` (classic NS5 coefficients).
    * N. Amsel et al., "The Polar Express: Optimal Matrix Sign Methods and Their Application to the Muon
      Algorithm" (2025), arXiv:2505.16932 (the Polar-Express coefficients).
    * openai/parameter-golf PR #1855 ``train_gpt.py`` L1720-1884 (Polar-Express NS5, row normalization, the
      record's Muon), PR #374 (classic coefficients, no row normalization).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
import torch.distributed as dist
from pydantic import model_validator
from torch import Tensor

from pgolf import dist as pdist
from pgolf.config import Count, CountOrZero, Decay, NonNegative, Section

NSCoeffs = Literal["polar_express", "classic"]

POLAR_EXPRESS_COEFFS: tuple[tuple[float, float, float], ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)
"""Per-iteration (a, b, c) of the record's Polar-Express iteration; iteration k uses tuple k."""

CLASSIC_COEFFS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""The classic quintic (a, b, c), applied at every iteration."""

_NORM_EPS = 1e-7


def ns_coefficients(steps: int, coeffs: NSCoeffs) -> tuple[tuple[float, float, float], ...]:
    """The (a, b, c) sequence that ``newton_schulz`` runs for ``steps`` iterations.

    ``polar_express`` takes the first ``min(steps, 5)`` tuples: asking for more than 5 still runs 5 iterations,
    exactly as the record does (``MuonConfig`` rejects that combination). ``classic`` repeats its one tuple.
    """
    if steps < 1:
        raise ValueError(f"Newton-Schulz needs at least one step, got {steps}")
    if coeffs == "polar_express":
        return POLAR_EXPRESS_COEFFS[:steps]
    if coeffs == "classic":
        return (CLASSIC_COEFFS,) * steps
    raise ValueError(f"unknown Newton-Schulz coefficients {coeffs!r} (expected 'polar_express' or 'classic')")


def newton_schulz(G: Tensor, steps: int, coeffs: NSCoeffs, dtype: torch.dtype) -> Tensor:
    """Approximate the orthogonal polar factor U V^T of each matrix in ``G`` (shape [..., m, n]).

    The iteration runs in ``dtype`` (bf16 on CUDA as in the record; fp32/fp64 for CPU tests) on the wide
    orientation (transposed when m > n so that X X^T is the small Gram matrix), after scaling each matrix to unit
    Frobenius norm. Each (a, b, c) maps every singular value s to ``a s + b s^3 + c s^5``. The result has G's dtype.
    """
    if G.ndim < 2:
        raise ValueError(f"newton_schulz needs [..., m, n] matrices, got shape {tuple(G.shape)}")
    X = G.to(dtype)
    transposed = X.size(-2) > X.size(-1)
    if transposed:
        X = X.mT
    X = X / (torch.linalg.matrix_norm(X, keepdim=True) + _NORM_EPS)
    for a, b, c in ns_coefficients(steps, coeffs):
        A = X @ X.mT
        B = b * A + c * (A @ A)
        X = a * X + B @ X
    if transposed:
        X = X.mT
    return X.to(G.dtype)


def nesterov_momentum(grad: Tensor, buf: Tensor, momentum: float, nesterov: bool) -> Tensor:
    """Update ``buf <- momentum buf + grad`` in place; return ``grad + momentum buf`` (Nesterov) or ``buf``."""
    buf.mul_(momentum).add_(grad)
    return grad + momentum * buf if nesterov else buf


def normalize_rows(U: Tensor) -> Tensor:
    """Divide each row (over the last dim) by ``max(||row||_2, 1e-7)``, the norm taken in fp32; keeps U's dtype."""
    norms = torch.linalg.vector_norm(U.float(), dim=-1, keepdim=True).clamp_min(_NORM_EPS)
    return (U.float() / norms).to(U.dtype)


def shape_scale(rows: int, cols: int) -> float:
    """``sqrt(max(1, rows/cols))`` with rows = output dim, cols = input dim (2 for a 2048x512 matrix)."""
    return math.sqrt(max(1.0, rows / cols))


def muon_update(
    grad: Tensor,
    buf: Tensor,
    *,
    momentum: float,
    nesterov: bool,
    row_normalize: bool,
    ns_steps: int,
    coeffs: NSCoeffs,
    ns_dtype: torch.dtype,
    orthogonalize: Callable[[Tensor, int, NSCoeffs, torch.dtype], Tensor] = newton_schulz,
) -> Tensor:
    """The Muon direction for one matrix (or a batch [..., rows, cols]); updates the momentum ``buf`` in place.

    Momentum (``buf``), Nesterov, optional row normalization, Newton–Schulz (``orthogonalize``: the eager
    :func:`newton_schulz` or a compiled copy), then the shape scale. The result has the dtype of the (Nesterov)
    momentum, i.e. the promotion of grad's and buf's dtypes.
    """
    U = nesterov_momentum(grad, buf, momentum, nesterov)
    if row_normalize:
        U = normalize_rows(U)
    ortho = orthogonalize(U, ns_steps, coeffs, ns_dtype)
    return ortho * shape_scale(grad.size(-2), grad.size(-1))


class MuonConfig(Section):
    """The Muon knobs of params.yaml (the hidden-matrix optimizer)."""

    lr: NonNegative
    """Base learning rate of the matrices (multiplied by the schedule's LR multiplier every step)."""
    momentum: Decay
    """Final momentum, reached after ``momentum_warmup_steps`` optimizer steps."""
    momentum_warmup_start: Decay
    """Momentum at step 0; it ramps linearly to ``momentum``."""
    momentum_warmup_steps: CountOrZero
    """Length of the linear momentum ramp in optimizer steps (0 = ``momentum`` from the start)."""
    ns_steps: Count
    """Newton–Schulz iterations (1-5 for polar_express, which has 5 tuples; any >= 1 for classic)."""
    ns_coeffs: NSCoeffs
    """``polar_express``: the record's per-iteration coefficients; ``classic``: (3.4445, -4.7750, 2.0315)."""
    row_normalize: bool
    """L2-normalize each row of the (Nesterov) momentum before Newton–Schulz."""
    nesterov: bool
    """Use the Nesterov form ``grad + momentum buf`` instead of ``buf``."""
    weight_decay: NonNegative
    """Decoupled weight decay: ``p <- p (1 - lr wd)`` with the scheduled lr, before the update."""

    @model_validator(mode="after")
    def _check(self) -> MuonConfig:
        for name in ("momentum", "momentum_warmup_start"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.momentum_warmup_steps < 0:
            raise ValueError(f"momentum_warmup_steps must be >= 0, got {self.momentum_warmup_steps}")
        if self.ns_steps < 1:
            raise ValueError(f"ns_steps must be >= 1, got {self.ns_steps}")
        if self.ns_coeffs == "polar_express" and self.ns_steps > len(POLAR_EXPRESS_COEFFS):
            raise ValueError(
                f"ns_steps={self.ns_steps} with polar_express would silently run only "
                f"{len(POLAR_EXPRESS_COEFFS)} iterations (it has 5 tuples): set ns_steps <= 5 or ns_coeffs=classic"
            )
        if self.lr < 0 or self.weight_decay < 0:
            raise ValueError(f"lr and weight_decay must be >= 0, got {self.lr} and {self.weight_decay}")
        return self


class Muon(torch.optim.Optimizer):
    """Muon for the 2-D hidden matrices of the model (attention and MLP weights, or banks of them).

    Embeddings, the output head and every scalar, gain, gate and bias belong in AdamW: Newton–Schulz
    orthogonalization only makes sense for matrices that map one hidden space to another. A parameter with more
    than two dims is treated as a batch of matrices over its last two dims (a "bank").

    ``step()`` assumes gradients are already averaged across ranks. With a process group of N > 1 ranks, the i-th
    parameter that has a gradient (counted over all groups, in order) is owned by rank ``i % N``: only the owner
    keeps its momentum buffer (so ``state_dict()`` differs between ranks) and computes the update. The updates of
    one (group, shape, dtype) reach every rank in one all-gather (each rank sends its owned updates of that shape,
    padded to the largest share): one collective per shape instead of one broadcast per matrix, in the parameter's
    dtype. Every rank applies the same update to its replica. The decision to skip a parameter whose grad is None
    must be the same on every rank (it is, for a replicated model).

    Each group's ``lr``, ``momentum``, ``weight_decay``, ``nesterov``, ``row_normalize``, ``ns_steps`` and
    ``ns_coeffs`` are read at every step, so a schedule may rewrite ``lr`` and ``momentum`` between steps.

    ``batch_by_shape`` (default: on CUDA): matrices of the same group, shape and dtype go through Newton–Schulz
    together, as one batch: one launch per product for all of them instead of one per matrix (the record's
    parameter banks batch likewise). On CPU the default is one matrix at a time, which measured faster there for
    the record's shapes (``bench/muon_step.py``).

    ``compile_backend`` (e.g. ``"inductor"``): run Newton–Schulz through ``torch.compile(dynamic=False,
    fullgraph=True)``, as the record does; one graph per batch shape, none of which depends on the schedule (lr
    and momentum stay outside the compiled function). None: eager.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        *,
        lr: float,
        momentum: float,
        weight_decay: float,
        nesterov: bool,
        row_normalize: bool,
        ns_steps: int,
        ns_coeffs: NSCoeffs,
        ns_dtype: torch.dtype = torch.float32,
        compile_backend: str | Callable | None = None,
        batch_by_shape: bool | None = None,
    ) -> None:
        params = list(params)
        for p in params:
            if isinstance(p, Tensor) and p.ndim < 2:
                raise ValueError(f"Muon is for matrices; got a parameter of shape {tuple(p.shape)} (use AdamW)")
        ns_coefficients(ns_steps, ns_coeffs)  # validates steps and the coefficient name
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            nesterov=nesterov,
            row_normalize=row_normalize,
            ns_steps=ns_steps,
            ns_coeffs=ns_coeffs,
        )
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        """dtype of the momentum buffers and of the Newton–Schulz iteration (bf16 on CUDA in the record)."""
        self.orthogonalize = (newton_schulz if compile_backend is None
                              else _compiled_ns(self.param_groups, compile_backend))  # fmt: skip
        """The Newton–Schulz function: eager, or compiled once per batch shape."""
        on_cuda = any(isinstance(p, Tensor) and p.is_cuda for p in params)
        self.batch_by_shape = on_cuda if batch_by_shape is None else batch_by_shape
        """Run Newton–Schulz once per (group, shape, dtype) batch instead of once per matrix."""

    def _bucket_updates(self, params: list[Tensor], group: dict) -> list[Tensor]:
        """This rank's updates for same-shape matrices of one group: momentum on their stacked buffers and one
        batched Newton–Schulz (one call, or one compiled graph, per shape instead of one per matrix); each
        update contiguous and in its parameter's dtype."""
        bufs = []
        for p in params:
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(p, dtype=self.ns_dtype)
            bufs.append(state["momentum_buffer"])
        single = len(params) == 1
        stacked = bufs[0] if single else torch.stack(bufs)
        update = muon_update(
            params[0].grad if single else torch.stack([p.grad for p in params]),
            stacked,
            momentum=group["momentum"],
            nesterov=group["nesterov"],
            row_normalize=group["row_normalize"],
            ns_steps=group["ns_steps"],
            coeffs=group["ns_coeffs"],
            ns_dtype=self.ns_dtype,
            orthogonalize=self.orthogonalize,
        )
        if single:
            return [update.to(params[0].dtype).contiguous()]
        torch._foreach_copy_(bufs, list(stacked.unbind(0)))
        return [u.to(p.dtype).contiguous() for p, u in zip(params, update.unbind(0), strict=True)]

    def _owned_updates(self, params: list[Tensor], group: dict) -> list[Tensor]:
        """This rank's updates of same-shape matrices of one group: one batched Newton–Schulz for all of them
        (``batch_by_shape``) or one per matrix."""
        if self.batch_by_shape or len(params) <= 1:
            return self._bucket_updates(params, group) if params else []
        return [u for p in params for u in self._bucket_updates([p], group)]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One Muon step over all groups (see the class docstring for the multi-rank split): per (group, shape,
        dtype), the owner's updates, one all-gather, then every rank applies them in parameter order."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        rank, world = pdist.group_rank_world()
        shapes: dict[tuple, list[tuple[Tensor, int]]] = {}  # (group, shape, dtype, device) -> [(param, owner)]
        index = 0
        for gi, group in enumerate(self.param_groups):
            for p in group["params"]:
                if p.grad is not None:
                    shapes.setdefault((gi, tuple(p.shape), p.dtype, p.device), []).append((p, index % world))
                    index += 1
        pending = []
        for (gi, *_), members in shapes.items():
            group = self.param_groups[gi]
            mine = [p for p, owner in members if owner == rank]
            updates = self._owned_updates(mine, group)
            if world == 1:
                pending.append((members, group, updates, None, None))
                continue
            share = max(sum(owner == r for _, owner in members) for r in range(world))
            local = torch.zeros((share, *members[0][0].shape), dtype=members[0][0].dtype, device=members[0][0].device)
            for i, u in enumerate(updates):
                local[i].copy_(u)
            gathered = [torch.empty_like(local) for _ in range(world)]
            handle = dist.all_gather(gathered, local, async_op=True)
            pending.append((members, group, gathered, handle, share))
        for members, group, updates, handle, _ in pending:
            if handle is not None:
                handle.wait()  # type: ignore[attr-defined]
            lr, wd = group["lr"], group["weight_decay"]
            taken = [0] * world
            for j, (p, owner) in enumerate(members):
                if handle is None:
                    update = updates[j]
                else:
                    update = updates[owner][taken[owner]]
                    taken[owner] += 1
                if wd != 0.0:
                    p.mul_(1.0 - lr * wd)
                p.add_(update, alpha=-lr)
        return loss


def _compiled_ns(param_groups: list[dict], backend: str | Callable) -> Callable:
    """``newton_schulz`` compiled with static shapes. Each batch shape is one recompilation of the same function
    (at most one per group and matrix shape), so Dynamo's per-function recompile limit is raised to that count
    when it is lower."""
    import torch._dynamo

    shapes = {(i, tuple(p.shape)) for i, group in enumerate(param_groups) for p in group["params"]}
    if len(shapes) > torch._dynamo.config.recompile_limit:
        torch._dynamo.config.recompile_limit = len(shapes)
    return torch.compile(newton_schulz, dynamic=False, fullgraph=True, backend=backend)
