"""pgolf.compress.parallel, the coding pool: streams coded and decoded one per worker give the serial bytes and
tensors exactly (the serializer's and model.bin's), a worker's error reaches the caller as the codec raised it,
and the pool's size."""

import threading
import time

import pytest
import torch

from pgolf.compress import codecs, parallel, pergroup, submission
from pgolf.quant import formats
from tests.helpers.common import needs
from tests.helpers.compress import HAVE_LRZIP, pool_entries
from tests.helpers.config import compress_cfg

CODECS = [
    pytest.param("ans", marks=needs("constriction")),
    "brotli",
    "lzma",
    pytest.param("zstd", marks=needs("zstandard")),
    "raw",
    pytest.param("lrzip", marks=pytest.mark.skipif(not HAVE_LRZIP, reason="lrzip binary not installed")),
]


def _same_tensors(a: list[formats.Entry], b: list[formats.Entry]) -> bool:
    (ta, ma), (tb, mb) = formats.to_tensors(a), formats.to_tensors(b)
    if ma != mb or ta.keys() != tb.keys():
        return False
    raw = {k: t.reshape(-1).view(torch.uint8) for k, t in tb.items()}
    return all(t.dtype == tb[k].dtype and torch.equal(t.reshape(-1).view(torch.uint8), raw[k]) for k, t in ta.items())


def test_run_all_runs_the_jobs_at_once_and_returns_them_in_order():
    barrier = threading.Barrier(4, timeout=20)  # a serial loop would wait here until the timeout

    def job(i: int):
        barrier.wait()
        time.sleep(0.02 * (4 - i))  # finish in reverse order
        return i, threading.current_thread().name

    out = parallel.run_all([lambda i=i: job(i) for i in range(4)], workers=4)
    assert [i for i, _ in out] == [0, 1, 2, 3]
    assert len({name for _, name in out}) == 4 and all(name.startswith("pgolf-codec") for _, name in out)
    assert parallel.run_all([lambda: threading.current_thread().name], workers=1) == [threading.current_thread().name]
    assert parallel.default_workers(3) == min(3, parallel.available_cpus()) and parallel.default_workers(0) == 1


def test_run_all_raises_what_the_serial_loop_would():
    def fail(msg: str, after: float):
        time.sleep(after)
        raise codecs.CodecError(msg)

    jobs = [lambda: 1, lambda: fail("second job", 0.2), lambda: fail("third job", 0.0)]
    for workers in (1, 3):
        with pytest.raises(codecs.CodecError, match="^second job$"):
            parallel.run_all(jobs, workers)


@pytest.mark.parametrize("codec", CODECS)
def test_parallel_coding_gives_the_serial_bytes_and_tensors(codec, monkeypatch):
    entries, cfg = pool_entries(), compress_cfg(codec=codec)
    serial, layout = pergroup.serialize(entries, cfg, workers=1)
    pools, real = [], parallel.run_all

    def spy(jobs, workers):
        pools.append((len(jobs), workers))
        return real(jobs, workers)

    monkeypatch.setattr(parallel, "run_all", spy)
    threads = torch.get_num_threads()
    pooled, pooled_layout = pergroup.serialize(entries, cfg, workers=4)
    assert pools == [(5, 4)]  # four groups and the rest stream, through the pool
    assert torch.get_num_threads() == threads  # the sorts' one-thread setting does not leak out
    assert pooled_layout == layout
    assert [(s.name, s.codec, s.raw_bytes, s.entropy_bits, s.data) for s in pooled] == [
        (s.name, s.codec, s.raw_bytes, s.entropy_bits, s.data) for s in serial
    ]
    assert ("perms" in [s.name for s in serial]) == (codec != "ans")
    _, manifest = formats.to_tensors(entries)
    data = {s.name: s.data for s in serial}
    one = pergroup.deserialize(data, layout, manifest, workers=1)
    many = pergroup.deserialize(data, layout, manifest, workers=4)
    assert pools[1:] == [(len(data), 1), (len(data), 4)]  # groups, rest and perms decoded in one pool
    assert _same_tensors(one, entries) and _same_tensors(many, one)


def test_model_bin_is_the_same_file_for_any_worker_count():
    entries = pool_entries()
    _, manifest = formats.to_tensors(entries)
    meta = {"formats": manifest, "model_config": {}, "train": {"looping_from_step": None}}
    cfg = compress_cfg() if HAVE_LRZIP else compress_cfg(codec="brotli")  # params.yaml's codecs
    blobs = [submission.pack_model(entries, meta, cfg, workers)[0] for workers in (1, 2, None)]
    assert blobs[0] == blobs[1] == blobs[2]
    assert _same_tensors(submission.unpack_model(blobs[0], workers=3)[0], entries)


def test_a_worker_error_is_the_codec_error_itself():
    entries, cfg = pool_entries(), compress_cfg(codec="brotli", rest_codec="brotli")
    streams, layout = pergroup.serialize(entries, cfg, workers=1)
    data = {s.name: s.data for s in streams}
    data["group:mlp.up.weight"] = data["group:mlp.up.weight"][:-9]
    _, manifest = formats.to_tensors(entries)
    messages = []
    for workers in (1, 4):
        with pytest.raises(codecs.CodecError, match="brotli stream is corrupt") as err:
            pergroup.deserialize(data, layout, manifest, workers)
        messages.append(str(err.value))
    assert messages[0] == messages[1]


def test_compress_metrics_count_the_coding_threads():
    from pgolf.compress.submission import pool_size

    streams = [pergroup.Stream(name, "brotli", b"", 0, None, 0.0) for name in ("group:a", "group:b", "rest", "perms")]
    assert pool_size(streams, 1) == 1 and pool_size(streams, 8) == 3  # perms is coded after the pool
    assert pool_size(streams, None) == min(3, parallel.available_cpus())
