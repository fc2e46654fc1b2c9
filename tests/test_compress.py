"""Codecs, the entropy coder, similarity sort and the per-group serializer: bit-exact round trips, determinism,
and the coders' distance to the zeroth-order entropy bound."""

import shutil

import numpy as np
import pytest
import torch

from pgolf.compress import codecs, entropy, pergroup
from pgolf.compress.simsort import inverse, similarity_order
from pgolf.config import parse_section, read_params
from pgolf.quant import formats

pytest.importorskip("constriction")
pytest.importorskip("zstandard")
hypothesis = pytest.importorskip("hypothesis")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies

HAVE_LRZIP = shutil.which("lrzip") is not None
BYTE_CODECS = ["raw", "brotli", "lzma", "zstd", pytest.param("lrzip", marks=pytest.mark.skipif(
    not HAVE_LRZIP, reason="lrzip binary not installed (apt-get install lrzip)"))]  # fmt: skip


def compress_cfg(**overrides) -> pergroup.CompressConfig:
    raw = read_params("params.yaml")["compress"]
    return parse_section({**raw, **overrides}, "compress", pergroup.CompressConfig)


def _payload(seed: int, n: int = 50_000) -> bytes:
    rng = np.random.default_rng(seed)
    ints = np.clip(np.round(rng.standard_t(6, size=n) * 4), -31, 31).astype(np.int8).tobytes()
    return ints + rng.standard_normal(n // 8).astype(np.float16).tobytes() + b"\x00\x01\x02"


@pytest.mark.parametrize("name", BYTE_CODECS)
def test_byte_codecs_round_trip_and_are_deterministic(name):
    codec = codecs.make_codec(name, compress_cfg())
    for data in (_payload(0), b"", b"x"):
        packed = codec.compress(data)
        assert codec.decompress(packed) == data
        assert codec.compress(data) == packed  # same input, same bytes
    if name != "raw":
        assert len(codec.compress(_payload(1))) < len(_payload(1))


@pytest.mark.parametrize("name", ["brotli", "lzma", "zstd"])
def test_corrupt_streams_raise_codec_errors(name):
    codec = codecs.make_codec(name, compress_cfg())
    packed = bytearray(codec.compress(_payload(2)))
    with pytest.raises(codecs.CodecError, match=name):
        codec.decompress(bytes(packed[: len(packed) // 2]))


def test_missing_lrzip_says_how_to_install(monkeypatch):
    monkeypatch.setattr(codecs.shutil, "which", lambda _: None)
    with pytest.raises(codecs.CodecError, match="apt-get install lrzip"):
        codecs.make_codec("lrzip", compress_cfg()).compress(b"abc")


@given(st.binary(max_size=200), st.integers(0, 8))
def test_shuffle_is_a_bijection(data, stride):
    assert codecs.unshuffle(codecs.shuffle(data, stride), stride) == data


def test_shuffle_groups_byte_planes():
    assert codecs.shuffle(b"abcdefg", 2) == b"acebdfg"
    assert codecs.shuffle(b"abcdef", 3) == b"adbecf"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 9)), min_size=1, max_size=4), st.integers(0, 2**31),
       st.sampled_from(["none", "row_class"]), st.integers(1, 5))  # fmt: skip
def test_ans_round_trips_any_int8_arrays(shapes, seed, context, classes):
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.integers(-128, 128, size=2))
    arrays = [rng.integers(lo, hi + 1, size=s).astype(np.int8) for s in shapes]
    arrays.append(rng.integers(lo, hi + 1, size=3).astype(np.int8))  # a 1-D tensor
    data = entropy.encode(arrays, entropy.AnsConfig(context=context, classes=classes))
    out = entropy.decode(data, [a.shape for a in arrays])
    assert all(np.array_equal(a, b) and b.dtype == np.int8 for a, b in zip(arrays, out, strict=True))


def test_ans_reaches_the_zeroth_order_bound_and_row_classes_go_below_it():
    rng = np.random.default_rng(0)
    width = rng.choice([0.5, 4.0], size=(600, 1))  # two row populations: a per-row context can tell them apart
    q = np.clip(np.round(rng.standard_t(6, size=(600, 400)) * width), -31, 31).astype(np.int8)
    bound = entropy.order0_entropy_bits(q) / 8
    plain = entropy.encode([q], entropy.AnsConfig(context="none", classes=1))
    assert bound <= len(plain) <= 1.002 * bound
    by_row = entropy.encode([q], entropy.AnsConfig(context="row_class", classes=2))
    assert len(by_row) < 0.9 * bound
    assert entropy.order0_entropy_bits(np.zeros(10)) == 0.0


def test_truncated_ans_stream_is_rejected():
    q = np.arange(-20, 20, dtype=np.int8).reshape(8, 5)
    data = entropy.encode([q], entropy.AnsConfig(context="none", classes=1))
    with pytest.raises(codecs.CodecError):
        entropy.decode(data[:7], [q.shape])


def _greedy_reference(q: np.ndarray) -> list[int]:
    q = q.astype(np.float64)
    used, order = {0}, [0]
    for _ in range(len(q) - 1):
        dist = np.abs(q - q[order[-1]]).sum(1)
        dist[list(used)] = np.inf
        order.append(int(np.argmin(dist)))
        used.add(order[-1])
    return order


@pytest.mark.parametrize("shape", [(1, 4), (37, 5), (200, 16)])
def test_similarity_order_is_the_greedy_l1_chain(shape):
    q = torch.randint(-3, 4, shape, generator=torch.Generator().manual_seed(shape[0]), dtype=torch.int8)
    order = similarity_order(q)
    assert order.tolist() == _greedy_reference(q.numpy())
    assert torch.equal(q[torch.from_numpy(order)][torch.from_numpy(inverse(order))], q)


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
