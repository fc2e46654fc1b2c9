"""pgolf.train.step, the CUDA training paths checked on CPU: the record's dtype policy, the two gradient clipping
scopes on 2 gloo ranks, a recompile limit on one rank stopping every rank, and a divergence reaching the user as
one line."""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from pgolf import compiler as tc
from pgolf.model.gpt import GPT
from pgolf.train import loop
from pgolf.train.step import apply_dtype_policy, train_step
from tests.helpers.common import needs
from tests.helpers.config import model_cfg
from tests.helpers.model import random_ids


def _block_output_dtypes(model: GPT, ids: torch.Tensor) -> set[torch.dtype]:
    seen: set[torch.dtype] = set()
    hooks = [b.register_forward_hook(lambda m, i, out: seen.add(out.dtype)) for b in model.blocks]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(ids, ids)
    for h in hooks:
        h.remove()
    return seen


def test_record_dtype_policy_keeps_a_bf16_embedding_and_residual_stream():
    torch.manual_seed(0)
    fp32, record = GPT(model_cfg()), GPT(model_cfg())
    record.load_state_dict(fp32.state_dict())
    apply_dtype_policy(fp32, "fp32")
    apply_dtype_policy(record, "record")
    assert all(p.dtype == torch.float32 for p in fp32.parameters())
    assert record.tok_emb.weight.dtype == torch.bfloat16
    for (name, p), q in zip(record.named_parameters(), fp32.parameters(), strict=True):
        if name != "tok_emb.weight":
            assert p.dtype == torch.float32 and torch.equal(p, q.bfloat16().float()), name  # bf16-rounded init
    ids = random_ids()
    assert _block_output_dtypes(fp32, ids) == {torch.float32}
    assert _block_output_dtypes(record, ids) == {torch.bfloat16}


# ------------------------------------------------------------------------------------------- 2 gloo ranks


class _Batch:
    def __init__(self, x: torch.Tensor) -> None:
        self.inputs, self.targets, self.cu_seqlens = x, x, None

    def to(self, device, non_blocking=False):
        return self


class _Loader:
    """Rank-dependent data: gradients of different directions and norms on the two ranks, so local clipping and
    global clipping give different updates."""

    def __init__(self, rank: int) -> None:
        self.x = torch.tensor([[3.0, 1.5, 0.0, 0.0]] if rank == 0 else [[0.0, -2.0, 3.0, 1.0]])

    def next_batch(self) -> _Batch:
        return _Batch(self.x)


class _Recorder:
    """Stands in for the optimizers: keeps the gradient the step would apply."""

    def __init__(self, model: nn.Module) -> None:
        self.model, self.grads = model, None

    def step(self) -> None:
        self.grads = [p.grad.clone() for p in self.model.parameters()]


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 3, bias=False)


def _forward(model: nn.Module):
    def forward(inputs, targets, cu_seqlens=None, looped=False):
        return (model(inputs) ** 2).sum()

    return forward


def _init(rank: int, store: str) -> None:
    # A short timeout turns a rank left waiting in a collective into a failure instead of a hung test.
    dist.init_process_group("gloo", store=dist.FileStore(store, 2), rank=rank, world_size=2,
                            timeout=timedelta(seconds=30))  # fmt: skip


def _clip_worker(rank: int, store: str, out: str, scope: str) -> None:
    _init(rank, store)
    try:
        model = _model()
        opts = _Recorder(model)
        train_step(_forward(model), model, opts, _Loader(rank), grad_accum=1, looped=False, clip=0.5,
                   clip_scope=scope, device=torch.device("cpu"))  # fmt: skip
        save_file({"grad": opts.grads[0]}, str(Path(out) / f"{scope}{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


def _local_grad(rank: int) -> torch.Tensor:
    model = _model()
    _forward(model)(_Loader(rank).x, None).backward()
    return model.weight.grad


def _clipped(g: torch.Tensor, norm: float = 0.5) -> torch.Tensor:
    return g * min(1.0, norm / (float(g.norm()) + 1e-6))


@pytest.mark.parametrize("scope", ["local", "global"])
def test_grad_clip_scope_on_two_ranks(tmp_path, scope):
    """local: mean of each rank's clipped gradient (the record); global: the clipped mean. Both ranks agree."""
    mp.spawn(_clip_worker, args=(str(tmp_path / "store"), str(tmp_path), scope), nprocs=2, join=True)
    got = [load_file(str(tmp_path / f"{scope}{r}.safetensors"))["grad"] for r in range(2)]
    g0, g1 = _local_grad(0), _local_grad(1)
    assert float(g0.norm()) > 0.5 and float(g1.norm()) > 0.5  # the clip binds on both ranks
    local, global_ = (_clipped(g0) + _clipped(g1)) / 2, _clipped((g0 + g1) / 2)
    assert not torch.allclose(local, global_, rtol=1e-3)
    torch.testing.assert_close(got[0], local if scope == "local" else global_)
    torch.testing.assert_close(got[1], got[0], rtol=0, atol=0)


class _Squares(nn.Module):
    """``_forward``'s loss as a module called as the GPT is (the model a step falls back to)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = _model()

    def forward(self, inputs, targets, cu_seqlens=None, looped=False):
        return (self.lin(inputs) ** 2).sum()


def _limit_worker(rank: int, store: str, out: str) -> None:
    _init(rank, store)
    try:
        model = _Squares()

        def forward(inputs, targets, cu_seqlens=None, looped=False):
            if rank == 0:
                raise tc.CompileLimitHit("rank 0 met an unseen bucket")
            return model(inputs, targets)

        outcome = train_step(forward, model, _Recorder(model), _Loader(rank), grad_accum=2, looped=False, clip=0.3,
                             device=torch.device("cpu"))  # fmt: skip
        sig = loop.agree(loop.Clock(Path(out)), outcome, torch.device("cpu"))
        save_file({"grad": model.lin.weight.grad.clone()}, str(Path(out) / f"grad{rank}.safetensors"))
        (Path(out) / f"rank{rank}.txt").write_text(f"{sig.compile_failed} {outcome.failure}")
    finally:
        dist.destroy_process_group()


def test_a_recompile_limit_on_one_rank_stops_every_rank(tmp_path):
    """Rank 0 hits the limit in its first micro-batch: it finishes the step eagerly (same math, so both ranks reach
    the gradient all-reduce with the same gradients instead of one of them timing out there), and the step's one
    agreement tells every rank, so the loop stops them together."""
    mp.spawn(_limit_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "True rank 0 met an unseen bucket"
    assert (tmp_path / "rank1.txt").read_text() == "True None"  # told by the agreement, not by its own step
    g0, g1 = (load_file(str(tmp_path / f"grad{r}.safetensors"))["grad"] for r in range(2))
    torch.testing.assert_close(g0, g1, rtol=0, atol=0)  # the all-reduce ran on both


# ------------------------------------------------------------------------------------------- divergence


@needs("dvclive")  # its former file skipped whole without dvclive
def test_divergence_reaches_the_user_as_one_line(capsys):
    from pgolf.cli import run
    from pgolf.errors import PgolfError
    from pgolf.train.step import TrainingDiverged

    message = "train: loss is nan at step 2; lower train.muon.lr / train.adam.*_lr or check the data"

    def main() -> None:
        raise TrainingDiverged(message)

    assert issubclass(TrainingDiverged, PgolfError)
    with pytest.raises(SystemExit) as stop:
        run(main)
    assert stop.value.code == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
