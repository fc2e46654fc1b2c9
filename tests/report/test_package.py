"""pgolf.report.package: train_gpt.py is the bundle of every stage stages/program.py runs, that entry, and the params
with the data taken from the challenge's layout (the end-to-end run: tests/pipeline/test_reproducible.py)."""

import ast
import base64
import lzma
import re

import brotli
import yaml

from pgolf.compress.bundle import ENTRIES, bundle_files, packaged_params, program
from pgolf.config import read_params
from tests.helpers.common import ROOT


def _program_source(text: str, codec: str) -> str:
    packed = base64.b85decode(re.search(r'b85decode\("(.*)"\)', text).group(1))
    return (lzma.decompress(packed) if codec == "lzma" else brotli.decompress(packed)).decode()


def test_train_gpt_holds_its_entry_every_stage_it_runs_and_the_params():
    params = packaged_params(read_params(ROOT / "params.yaml"), "sp8192")
    assert params["data"]["source"] == "fineweb_cached" and params["data"]["variant"] == "sp8192"
    files = set(bundle_files(ROOT, params))
    assert {"stages/program.py", "stages/tokenizer.py", "stages/tokenize.py", *ENTRIES} <= files
    assert not {"stages/prepare.py", "stages/bundle.py", "stages/summary.py"} & files
    source = _program_source(program(params, ROOT), params["bundle"]["codec"])
    run = source[source.rindex("from stages.program import main") :]
    assert yaml.safe_load(ast.literal_eval(run.split("main(", 1)[1].rsplit("))", 1)[0])) == params
    assert all(f"'{rel}':" in source for rel in files)
