"""pgolf.quant.hessian: calibration reads training tokens only, the Hessians come from the forward, and the
row counts are the rows summed into each Hessian."""

import pytest
import torch

from pgolf.data import shards
from pgolf.model.gpt import EMBEDDING
from pgolf.model.layers import Linear
from pgolf.quant.hessian import calibration_windows, collect_hessians, hessian_rows
from tests.helpers.quant import awq_calib, calib, noisy_model


def test_calibration_reads_no_validation_token(shard_dir, monkeypatch):
    read = []
    original = shards.read_shard
    monkeypatch.setattr(shards, "read_shard", lambda path, **kw: read.append(path.name) or original(path, **kw))
    windows = list(calibration_windows(shard_dir, calib(batches=20), rank=0, world_size=1))
    assert read and all(name.startswith("train_") for name in read)
    tokens = torch.cat([w.flatten() for w in windows])
    assert tokens.numel() == 20 * 8 * 33 and not (tokens == 63).any()
    other_rank = list(calibration_windows(shard_dir, calib(batches=20), rank=1, world_size=2))
    assert not torch.equal(windows[0], other_rank[0])


def test_hessians_come_from_the_forward(shard_dir):
    model = noisy_model()
    batches = list(calibration_windows(shard_dir, calib(), 0, 1))
    h, tokens = collect_hessians(model, iter(batches), looped=True, doc_isolated=False)
    assert tokens == 3 * 8 * 32 and len(h) == 6 * 6 + 1
    attn = "blocks.0.attn"
    torch.testing.assert_close(h[f"{attn}.q.weight"], h[f"{attn}.k.weight"])
    torch.testing.assert_close(h[f"{attn}.q.weight"], h[f"{attn}.v.weight"])
    hidden = torch.cat([model.hidden(b[:, :-1], None, True, None).reshape(-1, 32) for b in batches])
    torch.testing.assert_close(h[EMBEDDING], hidden.T @ hidden, rtol=1e-4, atol=1e-3)
    for m in h.values():
        torch.testing.assert_close(m, m.T)
        assert torch.linalg.eigvalsh(m.double()).min() > -1e-6 * m.diagonal().max()
    unlooped, _ = collect_hessians(model, iter(batches), looped=False, doc_isolated=False)
    torch.testing.assert_close(unlooped["blocks.0.mlp.down.weight"], h["blocks.0.mlp.down.weight"])
    loop_layer = "blocks.1.mlp.up.weight"  # layers 1-2 loop twice when recurrence is on
    assert not torch.allclose(unlooped[loop_layer], h[loop_layer])


@pytest.mark.parametrize("looped", [False, True])
def test_hessian_rows_are_the_rows_summed_into_each_hessian(one_shard_dir, looped):
    model = noisy_model()
    seen: dict[str, int] = {}
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, Linear)}
    hooks = [m.register_forward_pre_hook(lambda _m, a, n=n: seen.__setitem__(n, seen.get(n, 0) + a[0][..., 0].numel()))
             for n, m in linears.items()]  # fmt: skip
    hessians, tokens = collect_hessians(model, calibration_windows(one_shard_dir, awq_calib(), 0, 1), looped=looped,
                                        doc_isolated=False)  # fmt: skip
    for hook in hooks:
        hook.remove()
    rows = hessian_rows(model, looped, tokens)
    assert rows == {EMBEDDING: tokens, **seen}
    assert rows["blocks.1.mlp.up.weight"] == (2 if looped else 1) * tokens  # layers 1-2 run twice when looped
    assert set(rows) <= set(hessians)
