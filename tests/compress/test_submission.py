"""pgolf.compress.submission: model.bin restores the quantize stage's model exactly, every codec round-trips real
quantized tensors, and corrupted, truncated and foreign files are rejected."""

import shutil

import pytest
import torch

from pgolf.compress import container, submission
from pgolf.compress.submission import check_identical
from pgolf.model.gpt import GPT
from pgolf.quant import formats
from pgolf.quant.formats import load_quantized
from tests.helpers.common import COMPRESS_EXTRAS, needs
from tests.helpers.config import compress_cfg

pytestmark = needs(*COMPRESS_EXTRAS)  # the ans and zstd codecs, minify


def test_model_bin_restores_the_quantized_model_exactly(quant_dir, submission_dir):
    entries, meta = load_quantized(quant_dir)
    model, looped = submission.load_model(submission_dir / "model.bin")
    assert looped
    expected = GPT(model.cfg)
    expected.load_state_dict(formats.dequantized_state(entries))
    restored = model.state_dict()
    for name, t in expected.state_dict().items():
        assert restored[name].dtype == t.dtype and torch.equal(restored[name], t), name


@pytest.mark.parametrize("codec", ["ans", "brotli", "lzma", "zstd", "raw", "lrzip"])
def test_every_codec_round_trips_real_quantized_tensors(quant_dir, codec):
    if codec == "lrzip" and shutil.which("lrzip") is None:
        pytest.skip("lrzip binary not installed (apt-get install lrzip)")
    entries, meta = load_quantized(quant_dir)
    blob, _ = submission.pack_model(entries, meta, compress_cfg(codec=codec))
    restored, _ = submission.unpack_model(blob)
    check_identical(entries, restored)  # raises on any changed bit
    assert submission.pack_model(entries, meta, compress_cfg(codec=codec))[0] == blob


def test_corrupted_truncated_and_foreign_files_are_rejected(submission_dir):
    blob = (submission_dir / "model.bin").read_bytes()
    for at in (container.HEADER_BYTES + 3, len(blob) // 2, len(blob) - 1):
        flipped = bytearray(blob)
        flipped[at] ^= 0x01
        with pytest.raises(container.ContainerError, match="sha256 mismatch"):
            submission.unpack_model(bytes(flipped))
    with pytest.raises(container.ContainerError, match="truncated"):
        submission.unpack_model(blob[:-10])
    with pytest.raises(container.ContainerError, match="shorter than"):
        submission.unpack_model(blob[:20])
    with pytest.raises(container.ContainerError, match="not a pgolf model"):
        submission.unpack_model(b"PK\x03\x04" + blob[4:])
    wrong_version = bytearray(blob)
    wrong_version[8] = 9
    with pytest.raises(container.ContainerError, match="version 9"):
        submission.unpack_model(bytes(wrong_version))
    other = container.pack({"format": "something.else"}, [("a", b"xyz")])
    with pytest.raises(container.ContainerError, match="not a 'pgolf.model'"):
        submission.unpack_model(other)
