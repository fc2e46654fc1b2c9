"""The compress pool: streams coded and decoded one per worker give the serial bytes and tensors exactly, a worker's
error reaches the caller as the codec raised it, and decoding a model.bin of the default codecs needs neither
constriction nor zstandard."""

import importlib.util
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from pgolf.compress import codecs, parallel, pergroup, submission
from pgolf.config import parse_section, read_params
from pgolf.quant import formats

ROOT = Path(__file__).resolve().parents[1]
HAVE_LRZIP = shutil.which("lrzip") is not None
OPTIONAL = ("constriction", "zstandard", "python_minifier")


def _needs(module: str):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} not installed")


CODECS = [
    pytest.param("ans", marks=_needs("constriction")),
    "brotli",
    "lzma",
    pytest.param("zstd", marks=_needs("zstandard")),
    "raw",
    pytest.param("lrzip", marks=pytest.mark.skipif(not HAVE_LRZIP, reason="lrzip binary not installed")),
]


def _cfg(**overrides) -> pergroup.CompressConfig:
    raw = read_params(ROOT / "params.yaml")["compress"]
    return parse_section({**raw, **overrides}, "compress", pergroup.CompressConfig)


def _entries(layers: int = 3) -> list[formats.Entry]:
    """Four integer groups (two sorted by the default simsort list), per-row scales, and a passthrough tensor."""
    g = torch.Generator().manual_seed(0)
    shapes = {"attn.q.weight": (24, 16), "attn.k.weight": (8, 16), "mlp.up.weight": (40, 16)}
    entries = []
    for layer in range(layers):
        for role, (rows, cols) in shapes.items():
            q = torch.randint(-15, 16, (rows, cols), generator=g, dtype=torch.int8)
            fmt = formats.QuantizedMatrix(q=q, scale=torch.rand(rows, generator=g).half() + 0.01, bits=5, rotated=False)
            entries.append(formats.Entry(f"blocks.{layer}.{role}", (rows, cols), "float32", fmt, None))
        norm = formats.Passthrough(value=torch.randn(16, generator=g).half(), dtype="float32")
        entries.append(formats.Entry(f"blocks.{layer}.scale", (16,), "float32", norm, None))
    emb = formats.QuantizedMatrix(q=torch.randint(-63, 64, (50, 16), generator=g, dtype=torch.int8),
                                  scale=torch.rand(50, generator=g).half() + 0.01, bits=7, rotated=False)  # fmt: skip
    entries.append(formats.Entry("tok_emb.weight", (50, 16), "bfloat16", emb, None))
    return entries


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
    entries, cfg = _entries(), _cfg(codec=codec)
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
    entries = _entries()
    _, manifest = formats.to_tensors(entries)
    meta = {"formats": manifest, "model_config": {}, "train": {"looping_from_step": None}}
    cfg = _cfg() if HAVE_LRZIP else _cfg(codec="brotli")  # params.yaml's codecs
    blobs = [submission.pack_model(entries, meta, cfg, workers)[0] for workers in (1, 2, None)]
    assert blobs[0] == blobs[1] == blobs[2]
    assert _same_tensors(submission.unpack_model(blobs[0], workers=3)[0], entries)


def test_a_worker_error_is_the_codec_error_itself():
    entries, cfg = _entries(), _cfg(codec="brotli", rest_codec="brotli")
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


_BLOCKED = """
import sys
for name in {optional!r}:
    sys.modules[name] = None  # `import name` now raises ImportError, as on a box without the package
from pgolf.compress import bundle, codecs, container, entropy, pergroup, submission
for path in sys.argv[2:]:
    entries, _ = submission.unpack_model(open(path, "rb").read(), path)
    print("decoded", len(entries))
try:
    submission.unpack_model(open(sys.argv[1], "rb").read())
except codecs.CodecError as err:
    print(err)
assert all(sys.modules[name] is None for name in {optional!r})
"""


@_needs("constriction")
def test_decoding_the_default_codecs_needs_neither_constriction_nor_zstandard(tmp_path):
    entries = _entries(layers=2)
    _, manifest = formats.to_tensors(entries)
    meta = {"formats": manifest, "model_config": {}, "train": {"looping_from_step": None}}
    codecs_used = ["brotli", "lzma", "raw"] + (["lrzip"] if HAVE_LRZIP else [])
    paths = []
    for codec in ["ans", *codecs_used]:
        paths.append(tmp_path / f"{codec}.bin")
        paths[-1].write_bytes(submission.pack_model(entries, meta, _cfg(codec=codec, rest_codec="brotli"))[0])
    code = _BLOCKED.format(optional=OPTIONAL)
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[: len(codecs_used)] == [f"decoded {len(entries)}"] * len(codecs_used)
    assert "constriction package is not installed" in lines[-1] and "pip install constriction" in lines[-1]


def test_missing_zstandard_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(codecs.CodecError, match="pip install zstandard"):
        codecs.make_codec("zstd", _cfg()).compress(b"abc")


def test_missing_python_minifier_names_the_package(monkeypatch):
    from pgolf.compress.bundle import BundleConfig, build
    from pgolf.errors import PgolfError

    monkeypatch.setitem(sys.modules, "python_minifier", None)
    with pytest.raises(PgolfError, match="pip install python-minifier"):
        build(ROOT, BundleConfig(codec="lzma", minify=True), ["pgolf/compress/container.py"])


def test_compress_metrics_count_the_coding_threads():
    from pgolf.compress.submission import pool_size

    streams = [pergroup.Stream(name, "brotli", b"", 0, None, 0.0) for name in ("group:a", "group:b", "rest", "perms")]
    assert pool_size(streams, 1) == 1 and pool_size(streams, 8) == 3  # perms is coded after the pool
    assert pool_size(streams, None) == min(3, parallel.available_cpus())
