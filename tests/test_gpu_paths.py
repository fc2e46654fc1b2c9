"""The CUDA training paths, checked on CPU: the dtype that reaches the fused MLP kernel under autocast, the record's
dtype policy, Dynamo's recompile limit (sized, and a clear error on every rank when hit), and the two gradient
clipping scopes on 2 gloo ranks."""

from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import model_cfg
from safetensors.torch import load_file, save_file
from torch import nn

from pgolf import compiler as tc
from pgolf.kernels.mlp import eager_up_activation
from pgolf.model import layers
from pgolf.model.gpt import GPT
from pgolf.train.loader import build_cu_seqlens
from pgolf.train.step import apply_dtype_policy, train_step


def _ids(n: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model_cfg().vocab_size, (1, n), generator=g)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The fused MLP path forced on (CPU), with a recorder in place of the Triton kernel's entry point."""
    calls: list[tuple[torch.dtype, torch.dtype]] = []

    def record(x, w, slope):
        calls.append((x.dtype, w.dtype))
        return eager_up_activation(x, w, slope)

    monkeypatch.setattr(layers, "use_fused_mlp", lambda n, training: training)
    monkeypatch.setattr(layers, "fused_up_activation", record)
    return calls


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_mlp_receives_the_autocast_dtype(kernel_calls, compiled):
    """fp32 parameters and residual under bf16 autocast: the kernel gets bf16 operands (a custom op is outside
    autocast, so without the cast it would get fp32 and run without tensor cores); without autocast, fp32."""
    torch.manual_seed(0)
    model = GPT(model_cfg()).train()
    forward = torch.compile(model, fullgraph=True, dynamic=False, backend="aot_eager") if compiled else model
    ids = _ids()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        forward(ids, ids).backward()
    assert kernel_calls and set(kernel_calls) == {(torch.bfloat16, torch.bfloat16)}
    kernel_calls.clear()
    forward(ids, ids)
    assert set(kernel_calls) == {(torch.float32, torch.float32)}
    torch._dynamo.reset()


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
    ids = _ids()
    assert _block_output_dtypes(fp32, ids) == {torch.float32}
    assert _block_output_dtypes(record, ids) == {torch.bfloat16}


# ------------------------------------------------------------------------------------------- recompile limit


def _cu(length: int, tokens: int = 32) -> torch.Tensor:
    import numpy as np

    return build_cu_seqlens(np.arange(0, tokens, 8), tokens, 0, length)


def test_recompile_limit_is_sized_from_the_buckets():
    config = torch._dynamo.config
    with config.patch(recompile_limit=8, accumulated_recompile_limit=8):
        assert tc.recompile_limit(tc.BUCKET_LENGTHS) == 2 * (len(tc.BUCKET_LENGTHS) + tc.RECOMPILE_HEADROOM) > 8
        tc.compile_model(GPT(model_cfg()), seq_len=16, backend="aot_eager")
        assert config.recompile_limit == tc.recompile_limit(tc.BUCKET_LENGTHS)
        assert config.accumulated_recompile_limit >= config.recompile_limit
    with config.patch(recompile_limit=100):
        tc.raise_recompile_limit(5)
        assert config.recompile_limit == 100  # never lowered


def test_hitting_the_recompile_limit_is_a_clear_error():
    """fullgraph=True cannot fall back at the limit: the Dynamo failure becomes a CompileLimitHit naming the fix."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = tc.CompiledModel(GPT(model_cfg()), backend="aot_eager")
    ids = _ids()
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled(ids, ids, cu_seqlens=_cu(8))
        compiled(ids, ids, cu_seqlens=_cu(16))
        with pytest.raises(tc.CompileLimitHit, match="recompile limit.*BUCKET_LENGTHS"):
            compiled(ids, ids, cu_seqlens=_cu(24))
    torch._dynamo.reset()


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


def _limit_worker(rank: int, store: str, out: str) -> None:
    _init(rank, store)
    try:
        model = _model()

        def forward(inputs, targets, cu_seqlens=None, looped=False):
            if rank == 0:
                raise tc.CompileLimitHit("rank 0 met an unseen bucket")
            return _forward(model)(inputs, targets)

        try:
            train_step(forward, model, _Recorder(model), _Loader(rank), grad_accum=2, looped=False, clip=0.3,
                       device=torch.device("cpu"), compiled=True)  # fmt: skip
        except tc.CompileLimitHit as err:
            (Path(out) / f"rank{rank}.txt").write_text(str(err))
    finally:
        dist.destroy_process_group()


def test_a_recompile_limit_on_one_rank_stops_every_rank(tmp_path):
    """Rank 0 hits the limit in its first micro-batch; rank 1 does not wait in the gradient all-reduce but raises
    too (without the agreement it would time out there)."""
    mp.spawn(_limit_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2, join=True)
    assert (tmp_path / "rank0.txt").read_text() == "rank 0 met an unseen bucket"
    assert "another rank hit the torch.compile recompile limit" in (tmp_path / "rank1.txt").read_text()


def test_training_logs_without_dvclive(monkeypatch, tmp_path, capsys):
    """A box with the training packages only: the logger warns once and training goes on without curves."""
    import sys

    from pgolf.train.loop import Logger

    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive now raises ImportError
    logger = Logger(tmp_path / "live", resumed=False, enabled=True, total=100)
    logger.log(1, {"train/loss": 1.0})
    logger.progress(0.5, 1.0)
    logger.close()
    assert "dvclive is not installed" in capsys.readouterr().out and not (tmp_path / "live").exists()
