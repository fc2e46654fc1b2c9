"""torch.compile on CPU (``aot_eager``: Dynamo and AOTAutograd trace exactly as for inductor, without code
generation): the attention custom op, one full graph per (cu_seqlens bucket, schedule), the single expected
recompilation at the recurrence switch, and Muon's compiled Newton–Schulz."""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import model_cfg
from test_attention import qkv, random_cu

from pgolf import compiler as tc
from pgolf.model import attention
from pgolf.model.gpt import GPT
from pgolf.optim.muon import Muon

BACKEND = "aot_eager"


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def test_sdpa_gather_op_passes_opcheck_and_matches_eager_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_() for t in qkv(g, 1, 40, 4, 2, 8))
    cu = random_cu(g, 40, 16)
    torch.library.opcheck(torch.ops.pgolf.sdpa_gather.default, (q, k, v, cu))  # schema, fake impl, autograd
    out = torch.ops.pgolf.sdpa_gather(q, k, v, cu)
    grads = torch.autograd.grad((out * out.detach().sin()).sum(), (q, k, v))
    ref = attention._sdpa_gather(q, k, v, cu)
    ref_grads = torch.autograd.grad((ref * ref.detach().sin()).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_flash_bound_is_checked_in_eager_calls():
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv(g, 1, 32, 2, 2, 4)
    cu = torch.tensor([0, 20, 32, 32], dtype=torch.int32)
    assert attention._flattened_segments(q, k, v, cu, None)[2] == 20
    assert attention._flattened_segments(q, k, v, cu, 24)[2] == 24  # the bound, as the compiled graph uses it
    with pytest.raises(ValueError, match="exceeds the attention bound max_seqlen=16"):
        attention._flattened_segments(q, k, v, cu, 16)


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


@pytest.mark.parametrize("batch", [False, True])
def test_compiled_newton_schulz_matches_eager_and_never_recompiles_for_the_schedule(batch):
    torch.manual_seed(3)
    shapes = [(16, 8), (8, 16), (16, 8), (12, 12)]
    eager_params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    compiled_params = [torch.nn.Parameter(p.detach().clone()) for p in eager_params]
    kw = dict(lr=0.02, momentum=0.9, weight_decay=0.01, nesterov=True, row_normalize=True, ns_steps=5,
              ns_coeffs="polar_express")  # fmt: skip
    eager = Muon(eager_params, **kw)
    compiled = Muon(compiled_params, **kw, compile_backend=BACKEND, batch_by_shape=batch)
    start = tc.graphs_compiled()
    for step in range(4):
        grads = [torch.randn(s) for s in shapes]
        for opt, params in ((eager, eager_params), (compiled, compiled_params)):
            for group in opt.param_groups:  # the schedule rewrites lr and momentum every step
                group["lr"], group["momentum"] = 0.02 * (1 - step / 8), 0.9 + 0.01 * step
            for p, grad in zip(params, grads, strict=True):
                p.grad = grad.clone()
            opt.step()
    assert tc.graphs_compiled() - start == 3  # one graph per matrix shape (batched: (2,16,8), (1,8,16), ...)
    for a, b in zip(eager_params, compiled_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
