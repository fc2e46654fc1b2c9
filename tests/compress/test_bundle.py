"""pgolf.compress.bundle: the code bundle rebuilds a working package in an empty directory that scores model.bin
identically, and every wrapper (lzma, brotli, minified or not) restores the sources."""

import subprocess
import sys

import pytest

from pgolf.compress.bundle import BUNDLE_FILE, build, bundle_files
from tests.helpers.common import COMPRESS_EXTRAS, ROOT, needs
from tests.helpers.config import bundle_cfg

pytestmark = needs(*COMPRESS_EXTRAS)  # the ans and zstd codecs, minify


_LOGITS = """
import hashlib, sys, torch
import pgolf
from pgolf.compress.submission import load_model
model, looped = load_model(sys.argv[1])
ids = torch.arange(40).remainder(model.cfg.vocab_size).view(2, 20)
with torch.no_grad():
    logits = model(ids, looped=looped)
print(pgolf.__file__)
print(hashlib.sha256(logits.numpy().tobytes()).hexdigest())
"""


@pytest.mark.slow
def test_bundle_rebuilds_sources_that_score_model_bin_identically(submission_dir, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    (work / BUNDLE_FILE).write_bytes((submission_dir / BUNDLE_FILE).read_bytes())
    subprocess.run([sys.executable, BUNDLE_FILE], cwd=work, check=True)
    restored = sorted(str(p.relative_to(work)) for p in work.rglob("*.py") if p.name != BUNDLE_FILE)
    assert restored == bundle_files(ROOT)
    model_bin = str(submission_dir / "model.bin")
    runs = {}
    for where in (work, ROOT):
        out = subprocess.run([sys.executable, "-c", _LOGITS, model_bin], cwd=where, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        runs[where] = out.stdout.split()
    assert runs[work][0].startswith(str(work))  # the bundle's sources ran, not the installed package
    assert runs[work][1] == runs[ROOT][1]


@pytest.mark.parametrize(("codec", "minify"), [("lzma", False), ("lzma", True), ("brotli", False)])
def test_every_bundle_wrapper_restores_the_sources(codec, minify, tmp_path):
    """The #1492 lzma wrapper and the record's brotli one, minified or not: the files come back (verbatim when
    not minified) and still compile."""
    files = ["pgolf/__init__.py", "pgolf/compress/__init__.py", "pgolf/compress/container.py"]
    text = build(ROOT, bundle_cfg(codec=codec, minify=minify), files)
    assert text.startswith(f"import {codec} as L,base64 as B\nexec(L.decompress(B.b85decode(")
    (tmp_path / BUNDLE_FILE).write_text(text)
    subprocess.run([sys.executable, BUNDLE_FILE], cwd=tmp_path, check=True)
    for rel in files:
        restored = (tmp_path / rel).read_text()
        compile(restored, rel, "exec")
        assert (restored == (ROOT / rel).read_text()) != minify or rel.endswith("__init__.py")


def test_the_counted_code_is_the_whole_program_from_training_to_evaluation():
    """Quantization and compression are part of the program the challenge counts (the record's train_gpt.py holds
    its GPTQ and its per-group compressor); data preparation and tokenizer training are not."""
    files = set(bundle_files(ROOT))
    stages = {"train", "export", "calibrate", "quantize", "compress", "evaluate"}
    assert {f"stages/{s}.py" for s in stages} <= files
    assert {"pgolf/quant/gptq.py", "pgolf/quant/hessian.py", "pgolf/quant/lqer.py", "pgolf/compress/pergroup.py"} <= (
        files
    )
    assert not {"stages/prepare.py", "stages/tokenizer.py", "stages/tokenize.py", "stages/bundle.py"} & files
