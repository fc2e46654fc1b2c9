"""pgolf.compress.pergroup: the per-group serializer round-trips every format bit-exactly and deterministically,
in every layout; the group key."""

import pytest
import torch

from pgolf.compress import pergroup
from pgolf.quant import formats
from tests.helpers.compress import HAVE_LRZIP
from tests.helpers.config import compress_cfg

pytest.importorskip("constriction")  # the guards of its former file (tests/test_compress.py)
pytest.importorskip("zstandard")
pytest.importorskip("hypothesis")


def random_entries(seed: int = 0) -> list[formats.Entry]:
    """Entries of every format and dtype, with layer-prefixed names that group by role."""
    g = torch.Generator().manual_seed(seed)
    entries = []
    for layer in range(3):
        for role, (rows, cols) in {"attn.q.weight": (24, 16), "mlp.up.weight": (40, 16)}.items():
            q = torch.randint(-31, 32, (rows, cols), generator=g, dtype=torch.int8)
            scale = (torch.rand(rows, generator=g) * 0.01 + 1e-3).half()
            lqer = None
            if layer == 1:
                lqer = formats.LowRankCorrection(a_q=torch.randint(-2, 2, (rows, 2), generator=g, dtype=torch.int8),
                                                 a_scale=torch.tensor(0.01).half(),
                                                 b_q=torch.randint(-8, 8, (2, cols), generator=g, dtype=torch.int8),
                                                 b_scale=torch.rand(2 * cols // 16, generator=g).half(),
                                                 mode="asym", group=16)  # fmt: skip
            fmt = formats.QuantizedMatrix(q=q, scale=scale, bits=6, rotated=False)
            entries.append(formats.Entry(f"blocks.{layer}.{role}", (rows, cols), "float32", fmt, lqer))
        gate = formats.GateInt8Row(q=torch.randint(-127, 128, (4, 3), generator=g, dtype=torch.int8),
                                   scale=torch.rand(4, generator=g).half())  # fmt: skip
        entries.append(formats.Entry(f"blocks.{layer}.attn.gate.weight", (4, 3), "float32", gate, None))
        norm = formats.Passthrough(value=torch.randn(16, generator=g).half(), dtype="float32")
        entries.append(formats.Entry(f"blocks.{layer}.scale", (16,), "float32", norm, None))
    emb = formats.QuantizedMatrix(q=torch.randint(-63, 64, (50, 16), generator=g, dtype=torch.int8),
                                  scale=torch.rand(50, generator=g).half(), bits=7, rotated=False)  # fmt: skip
    entries.append(formats.Entry("tok_emb.weight", (50, 16), "bfloat16", emb, None))
    lam = formats.Passthrough(value=torch.randn(2, generator=g), dtype="float32")
    entries.append(formats.Entry("smear_lambda", (2,), "float32", lam, None))
    return entries


def assert_same_entries(a: list[formats.Entry], b: list[formats.Entry]) -> None:
    ta, ma = formats.to_tensors(a)
    tb, mb = formats.to_tensors(b)
    assert ma == mb and ta.keys() == tb.keys()
    for key in ta:
        assert ta[key].dtype == tb[key].dtype and torch.equal(ta[key], tb[key]), key


SERIALIZER_VARIANTS = [
    {"codec": "ans"},
    {"codec": "ans", "ans": {"context": "row_class", "classes": 3}},
    {"codec": "brotli", "rest_shuffle": 0},
    {"codec": "zstd", "transpose": False, "simsort": []},
    {"codec": "lzma", "grouping": "single"},
    {"codec": "raw", "rest_codec": "raw"},
    pytest.param({"codec": "lrzip"}, marks=pytest.mark.skipif(not HAVE_LRZIP, reason="lrzip binary not installed")),
]


@pytest.mark.parametrize("change", SERIALIZER_VARIANTS)
def test_per_group_serializer_round_trips_bit_exactly(change):
    entries = random_entries()
    cfg = compress_cfg(**change)
    streams, layout = pergroup.serialize(entries, cfg)
    _, manifest = formats.to_tensors(entries)
    restored = pergroup.deserialize({s.name: s.data for s in streams}, layout, manifest)
    assert_same_entries(entries, restored)
    again, _ = pergroup.serialize(entries, cfg)
    assert [s.data for s in again] == [s.data for s in streams]
    names = [s.name for s in streams]
    if cfg.grouping == "role":
        assert {"group:attn.q.weight", "group:mlp.up.weight", "group:tok_emb.weight", "rest"} <= set(names)
        sorted_groups = set(cfg.simsort) & {"attn.q.weight", "mlp.up.weight", "tok_emb.weight"}
        assert ("perms" in names) == (bool(sorted_groups) and cfg.codec != "ans")
    else:
        assert names == ["group:all", "rest"]
    bounds = [s.entropy_bits for s in streams if s.name.startswith("group:")]
    assert all(b is not None and b > 0 for b in bounds)


def test_group_key_strips_the_layer_only():
    assert pergroup.group_key("blocks.10.attn.q.weight", "role") == "attn.q.weight"
    assert pergroup.group_key("tok_emb.weight", "role") == "tok_emb.weight"
    assert pergroup.group_key("blocks.1.mlp.up.weight", "single") == "all"
