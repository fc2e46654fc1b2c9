"""pgolf.compress.container: streams round-trip (empty ones too), reserved bytes must be zero, the checksum
covers the header, the previous version says to recompress."""

import struct

import pytest

from pgolf.compress import container
from tests.helpers.common import COMPRESS_EXTRAS, needs

pytestmark = needs(*COMPRESS_EXTRAS)  # the ans and zstd codecs, minify


def test_container_streams_round_trip_including_empty_ones():
    streams = [("a", b"hello"), ("empty", b""), ("b", bytes(range(256)))]
    manifest, out = container.unpack(container.pack({"k": [1, 2]}, streams))
    assert manifest["k"] == [1, 2] and out == dict(streams)
    assert container.pack({"k": 1}, streams) == container.pack({"k": 1}, streams)


@pytest.mark.parametrize("at", [10, 11])
def test_container_reserved_bytes_must_be_zero(at):
    bad = bytearray(container.pack({"k": 1}, [("a", b"xyz")]))
    bad[at] = 0x01
    with pytest.raises(container.ContainerError, match=r"^m\.bin: reserved header bytes at offset 10-11 are not zero"):
        container.unpack(bytes(bad), "m.bin")


def test_container_checksum_covers_the_header():
    """Moving a byte from the payload length to the manifest length keeps the file size: only the hash sees it."""
    good = container.pack({"k": 1}, [("a", b"xyz")])
    magic, version, reserved, m_len, p_len, digest = struct.unpack_from("<8sHHIQ32s", good)
    shifted = struct.pack("<8sHHIQ32s", magic, version, reserved, m_len + 1, p_len - 1, digest) + good[56:]
    with pytest.raises(container.ContainerError, match="sha256 mismatch"):
        container.unpack(shifted)


def test_container_of_the_previous_version_says_to_recompress():
    old = bytearray(container.pack({"k": 1}, [("a", b"xyz")]))
    old[8:10] = (container.VERSION - 1).to_bytes(2, "little")
    with pytest.raises(container.ContainerError, match=r"container version 1, .*re-run `dvc repro compress`"):
        container.unpack(bytes(old))
