"""pgolf.compress.bundle: the submission program rebuilds a working package in an empty directory that scores
model.bin identically, every wrapper (lzma, brotli, minified or not) restores the sources, and the params decide
which modules it carries (one test per switch)."""

import copy
import os
import subprocess
import sys

import pytest

from pgolf.compress.bundle import (
    PROGRAM_FILE,
    SWITCHES,
    build,
    bundle_files,
    latin1_literal,
    left_out,
    packaged_params,
)
from pgolf.config import read_params
from tests.helpers.common import COMPRESS_EXTRAS, ROOT, needs
from tests.helpers.compress import submission_params
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
    (work / PROGRAM_FILE).write_bytes((submission_dir / PROGRAM_FILE).read_bytes())
    subprocess.run([sys.executable, PROGRAM_FILE, "--help"], cwd=work, check=True, capture_output=True)
    restored = sorted(str(p.relative_to(work)) for p in work.rglob("*.py") if p.name != PROGRAM_FILE)
    assert restored == bundle_files(ROOT, packaged_params(submission_params(codec="ans")))
    assert "pgolf/compress/entropy.py" in restored  # model.bin is ans-coded: the program carries the range coder
    model_bin = str(submission_dir / "model.bin")
    runs = {}
    for where in (work, ROOT):
        out = subprocess.run([sys.executable, "-c", _LOGITS, model_bin], cwd=where, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        runs[where] = out.stdout.split()
    assert runs[work][0].startswith(str(work))  # the bundle's sources ran, not the installed package
    assert runs[work][1] == runs[ROOT][1]


@pytest.mark.parametrize(
    ("codec", "minify", "text"),
    [("lzma", False, "base85"), ("lzma", True, "base85"), ("brotli", False, "base85"), ("brotli", True, "latin1")],
)
def test_every_bundle_wrapper_restores_the_sources(codec, minify, text, tmp_path):
    """The #1492 lzma wrapper and the record's brotli one, minified or not, in base85 or latin-1: the files come
    back (verbatim when not minified) and still compile."""
    files = ["pgolf/__init__.py", "pgolf/compress/__init__.py", "pgolf/compress/container.py"]
    bundle = build(ROOT, bundle_cfg(codec=codec, minify=minify, text=text), files)
    head = {"base85": f"import {codec} as L,base64 as B\nexec(L.decompress(B.b85decode(",
            "latin1": f"#coding:latin-1\nimport {codec} as L\nexec(L.decompress('"}  # fmt: skip
    assert bundle.startswith(head[text])
    (tmp_path / PROGRAM_FILE).write_bytes(bundle.encode("latin-1"))
    subprocess.run([sys.executable, PROGRAM_FILE], cwd=tmp_path, check=True)
    for rel in files:
        restored = (tmp_path / rel).read_text()
        compile(restored, rel, "exec")
        assert (restored == (ROOT / rel).read_text()) != minify or rel.endswith("__init__.py")


def test_a_latin1_literal_holds_every_byte_and_python_reads_it_back(tmp_path):
    """Every byte value, NUL, CR, LF, CRLF, the quote and the backslash next to digits: a latin-1 source file
    holding the literal gives the bytes back, one byte per byte but the few escaped."""
    data = bytes(range(256)) * 2 + b"\x000\r\n\r'\\'\\0\n\x00"
    literal = latin1_literal(data)
    assert len(literal) <= len(data) + 3 * data.count(0) + sum(data.count(c) for c in b"\n\r'\\")
    (tmp_path / "check.py").write_bytes(f"#coding:latin-1\nimport sys\nsys.stdout.buffer.write('{literal}'"
                                        ".encode('latin-1'))\n".encode("latin-1"))  # fmt: skip
    out = subprocess.run([sys.executable, "check.py"], cwd=tmp_path, capture_output=True, check=True)
    assert out.stdout == data


def test_the_counted_code_is_the_whole_program_from_training_to_evaluation():
    """Quantization and compression are part of the program the challenge counts (the record's train_gpt.py holds
    its GPTQ and its per-group compressor); data preparation and tokenizer training are not."""
    files = set(bundle_files(ROOT))
    stages = {"program", "tokenizer", "tokenize", "train", "export", "calibrate", "quantize", "compress", "evaluate"}
    assert {f"stages/{s}.py" for s in stages} <= files
    assert {"pgolf/quant/gptq.py", "pgolf/quant/hessian.py", "pgolf/quant/lqer.py", "pgolf/compress/pergroup.py"} <= (
        files
    )
    assert not {"stages/prepare.py", "stages/bundle.py", "stages/summary.py", "pgolf/compress/bundle.py"} & files
    assert not any(f.startswith("pgolf/report/") for f in files)
    assert not {"pgolf/data/prepare.py", "pgolf/data/encode.py", "pgolf/data/tokenizer_train.py"} & files


def _with(params: dict, settings: dict[str, object]) -> dict:
    params = copy.deepcopy(params)
    for key, value in settings.items():
        *path, last = key.split(".")
        section = params
        for part in path:
            section = section[part]
        section[last] = value
    return params


_NO_TTT = {"eval.lora_ttt.enabled": False, "eval.chunk_sgd.enabled": False, "eval.multi_phase.enabled": False}
_ON_OFF = {  # each switched module: settings that turn it on, settings that turn it off
    "pgolf/quant/hadamard.py": ({"quantize.hadamard": True}, {"quantize.hadamard": False}),
    "pgolf/quant/awq.py": ({"quantize.awq.enabled": True}, {"quantize.awq.enabled": False}),
    "pgolf/train/qat.py": ({"train.qat.enabled": True}, {"train.qat.enabled": False}),
    "pgolf/train/checkpoint.py": ({"train.checkpoint_seconds": 30}, {"train.checkpoint_seconds": 0}),
    "pgolf/kernels/mlp.py": ({"model.fused_mlp": "triton"}, {"model.fused_mlp": "compiled"}),
    "pgolf/compress/entropy.py": ({"compress.codec": "ans"}, {"compress.codec": "lrzip"}),
    "pgolf/eval/sliding.py": ({"eval.sliding.enabled": True}, {"eval.sliding.enabled": False}),
    "pgolf/eval/lora_ttt.py": ({"eval.lora_ttt.enabled": True}, {"eval.lora_ttt.enabled": False}),
    "pgolf/eval/chunk_sgd.py": ({**_NO_TTT, "eval.multi_phase.enabled": True}, _NO_TTT),  # multi_phase imports it
    "pgolf/eval/multi_phase.py": ({"eval.multi_phase.enabled": True}, {"eval.multi_phase.enabled": False}),
    "pgolf/eval/sgd.py": ({**_NO_TTT, "eval.chunk_sgd.enabled": True}, _NO_TTT),
    "pgolf/eval/ngram.py": (
        {"eval.lora_ttt.enabled": True, "eval.lora_ttt.ngram_tilt.enabled": True},
        {"eval.lora_ttt.enabled": True, "eval.lora_ttt.ngram_tilt.enabled": False},
    ),
    "pgolf/eval/ngram_audit.py": (
        {"eval.lora_ttt.enabled": True, "eval.lora_ttt.ngram_tilt.enabled": True},
        {"eval.lora_ttt.enabled": False, "eval.lora_ttt.ngram_tilt.enabled": True},
    ),
}


@pytest.mark.parametrize("switch", SWITCHES, ids=lambda s: s.module)
def test_each_switch_decides_whether_the_program_carries_its_module(switch):
    """Off: the module and nothing else it alone imports is left out; on: it is carried. A module no params
    switch on (data preparation, the hub, the device lease) is never carried."""
    params = packaged_params(read_params(ROOT / "params.yaml"))
    if switch.key is None:
        assert switch.module not in bundle_files(ROOT, params) and switch.module not in bundle_files(ROOT)
        assert (ROOT / switch.module).is_file()
        return
    on, off = _ON_OFF[switch.module]
    assert switch.module in bundle_files(ROOT, _with(params, on))
    assert switch.module not in bundle_files(ROOT, _with(params, off))
    assert switch.module in left_out(_with(params, off))


def test_every_switch_has_a_test_and_a_mode_off_leaves_its_code_out():
    assert {s.module for s in SWITCHES if s.key is not None} == set(_ON_OFF)
    params = packaged_params(read_params(ROOT / "params.yaml"))
    plain = set(bundle_files(ROOT, _with(params, {**_NO_TTT, "eval.sliding.enabled": False})))
    assert not {"pgolf/model/lora.py", "pgolf/eval/ngram.py"} & plain  # LoRA TTT's adapters go with it


_IMPORT_ALL = """
import importlib, pathlib, sys
sys.path.insert(0, "")
for path in sorted(pathlib.Path(".").rglob("*.py")):
    if path.name != "train_gpt.py":
        importlib.import_module(".".join(path.with_suffix("").parts).removesuffix(".__init__"))
print("imported")
"""


def test_the_program_with_every_switch_off_imports_without_the_modules_it_left_out(tmp_path):
    """Every module the program carries imports with the switched-off ones absent: none of them is imported at
    the top of a carried module (where one is, the packaged program would fail before it starts)."""
    params = packaged_params(read_params(ROOT / "params.yaml"))
    for _, off in _ON_OFF.values():
        params = _with(params, off)
    params = _with(params, {"eval.lora_ttt.ngram_tilt.enabled": False})
    files = bundle_files(ROOT, params)
    assert set(left_out(params)) == {s.module for s in SWITCHES}
    for rel in files:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text((ROOT / rel).read_text())
    out = subprocess.run([sys.executable, "-c", _IMPORT_ALL], cwd=tmp_path, capture_output=True, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip() == "imported", out.stderr[-2000:]
