"""pgolf.compress.codecs: bit-exact round trips, determinism, corrupt streams, the byte shuffle."""

import numpy as np
import pytest

from pgolf.compress import codecs
from tests.helpers.compress import HAVE_LRZIP
from tests.helpers.config import compress_cfg

pytest.importorskip("constriction")
pytest.importorskip("zstandard")
hypothesis = pytest.importorskip("hypothesis")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies


BYTE_CODECS = ["raw", "brotli", "lzma", "zstd", pytest.param("lrzip", marks=pytest.mark.skipif(
    not HAVE_LRZIP, reason="lrzip binary not installed (apt-get install lrzip)"))]  # fmt: skip


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
