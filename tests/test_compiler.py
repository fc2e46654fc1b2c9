"""pgolf.compiler on CPU (``aot_eager``: Dynamo and AOTAutograd trace exactly as for inductor, without code
generation): one full graph per (cu_seqlens bucket, schedule), the single expected recompilation at the
recurrence switch, the bucket warm-up, a graph break, and the recompile limit (sized, and a clear error)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from pgolf import compiler as tc
from pgolf.model.gpt import GPT
from pgolf.train.loader import build_cu_seqlens
from tests.helpers.common import needs
from tests.helpers.config import model_cfg
from tests.helpers.model import random_ids

BACKEND = "aot_eager"


def small_model(seed: int) -> GPT:
    """3 layers with recurrence over layer 1 (looped: 0 1 1 2), the record's layer kinds otherwise, float64."""
    torch.manual_seed(seed)
    cfg = model_cfg(num_layers=3, parallel_start_layer=2, loop_start=1, loop_end=1, num_loops=1, xsa_last_n=3)
    return GPT(cfg).double()


def _batch(model: GPT, tokens: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(2, model.cfg.vocab_size, (1, tokens), generator=g)
    y = torch.randint(2, model.cfg.vocab_size, (1, tokens), generator=g)
    return x, y


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_one_graph_per_bucket_and_schedule_equal_to_eager_and_recurrence_recompiles_once():
    model = small_model(0)
    x, y = _batch(model, 192, 0)
    cu = {n: tc.bucket_cu_seqlens(192, 48 if n == 64 else 1, n, x.device) for n in (64, 128)}
    model(x, y, cu_seqlens=cu[64], looped=False).backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    forward = tc.compile_model(model, seq_len=48, backend=BACKEND)
    start = tc.graphs_compiled()
    loss = forward(x, y, cu_seqlens=cu[64], looped=False)
    torch.testing.assert_close(loss, model(x, y, cu_seqlens=cu[64], looped=False), rtol=1e-12, atol=0)
    loss.backward()
    for name, grad in eager.items():  # the custom attention op's backward included
        torch.testing.assert_close(model.get_parameter(name).grad, grad, rtol=1e-10, atol=1e-12, msg=name)
    forward(x, y, cu_seqlens=cu[128], looped=False).backward()
    assert forward.fullgraph and tc.graphs_compiled() - start == 2  # one graph per cu bucket, no breaks
    switch = tc.graphs_compiled()
    loss = forward(x, y, cu_seqlens=cu[64], looped=True)  # recurrence switches on
    torch.testing.assert_close(loss, model(x, y, cu_seqlens=cu[64], looped=True), rtol=1e-12, atol=0)
    assert tc.graphs_compiled() - switch == 1  # the one expected recompilation
    reasons = [r for rs in torch._dynamo.utils.guard_failures.values() for r in rs]
    assert any("looped" in r for r in reasons)
    forward(x, y, cu_seqlens=cu[128], looped=True).backward()
    steady = tc.graphs_compiled()
    for looped in (False, True, False):  # steady state: every shape and schedule is cached
        for n in (64, 128):
            forward(x, y, cu_seqlens=cu[n], looped=looped).backward()
    assert tc.graphs_compiled() == steady


@pytest.mark.slow
@pytest.mark.usefixtures("fresh_dynamo")
def test_bucket_warmup_covers_the_reachable_buckets_of_both_schedules():
    model = small_model(2)
    forward = tc.compile_model(model, seq_len=32, backend=BACKEND)
    x, y = _batch(model, 100, 2)
    built = tc.bucket_warmup(forward, model, x, y, seq_len=32, autocast=contextlib.nullcontext, buckets=(64, 256))
    assert built == 2 and all(p.grad is None for p in model.parameters())  # 256 entries: > 101 boundaries
    before = tc.graphs_compiled()
    for looped in (True, False):  # real segmentations of the same bucket reuse the graphs
        for cut in (7, 100):
            forward(x, y, cu_seqlens=tc.bucket_cu_seqlens(100, cut, 64, x.device), looped=looped).backward()
    assert tc.graphs_compiled() == before


@pytest.mark.usefixtures("fresh_dynamo")
def test_a_graph_break_falls_back_with_a_warning():
    class Breaks(torch.nn.Module):
        def forward(self, x):
            x = x * 2
            torch._dynamo.graph_break()
            return x + 1

    forward = tc.CompiledModel(Breaks(), backend=BACKEND)
    with pytest.warns(UserWarning, match="not one graph"):
        out = forward(torch.ones(3))
    assert not forward.fullgraph and torch.equal(out, torch.full((3,), 3.0))
    assert tc.graph_report(forward) == {"fullgraph": False, "graph_break": forward.break_reason}
    assert "graph_break" in forward.break_reason and tc.graph_report(Breaks()) == {"fullgraph": None}


@needs("dvclive")  # its former file imported test_train.py, which skipped without dvclive
def test_bucket_warmup_runs_the_given_schedules_and_skips_buckets_a_cap_never_meets():
    """256 tokens cut every 2 give at least 129 boundaries: the 64 and 128 buckets never occur."""
    weight = torch.nn.Parameter(torch.ones(()))
    seen = []

    def forward(inputs, targets, *, cu_seqlens, looped):
        seen.append((cu_seqlens.numel(), looped))
        return weight * 1.0

    ids = torch.zeros(1, 256, dtype=torch.int64)
    tc.bucket_warmup(forward, torch.nn.ParameterList([weight]), ids, ids, seq_len=2, autocast=contextlib.nullcontext,
                     buckets=(64, 128, 192, 256), schedules=(True,))  # fmt: skip
    assert seen == [(192, True), (256, True)] and weight.grad is None


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


@pytest.mark.slow
def test_hitting_the_recompile_limit_is_a_clear_error():
    """fullgraph=True cannot fall back at the limit: the Dynamo failure becomes a CompileLimitHit naming the fix."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    compiled = tc.CompiledModel(GPT(model_cfg()), backend="aot_eager")
    ids = random_ids()
    with torch._dynamo.config.patch(recompile_limit=2):
        compiled(ids, ids, cu_seqlens=_cu(8))
        compiled(ids, ids, cu_seqlens=_cu(16))
        with pytest.raises(tc.CompileLimitHit, match="recompile limit.*BUCKET_LENGTHS"):
            compiled(ids, ids, cu_seqlens=_cu(24))
    torch._dynamo.reset()
