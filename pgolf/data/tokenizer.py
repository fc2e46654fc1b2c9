"""SentencePiece tokenizer: training on training documents only, loading, and byte lookup tables.

The default options make tokenization lossless: ``identity`` normalization with whitespace kept and byte
fallback, so ``decode(encode(doc)) == doc`` byte for byte. With ``caseops: true`` documents pass through the
CaseOps transform (:mod:`pgolf.data.caseops`) before training and encoding, and its four operators are reserved as
single pieces.

The byte lookup tables reproduce the challenge's BPB convention for shards that have no byte sidecar (the
published FineWeb shards): a target ``y`` after token ``x`` is charged
``base_bytes[y] + (has_leading_space[y] and not is_boundary[x])``. ``base_bytes`` counts a piece's UTF-8 bytes
after its leading "▁", every other "▁" as the one space byte it stands for (the reference counts 3, which makes no
difference on its tokenizers, whose pieces never hold an inner "▁").

References: the record's ``build_sentencepiece_luts`` and ``download_hf_docs_and_tokenize.py``; parameter-golf
issue #897 (the "▁" piece the LUT method needs).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import sentencepiece as spm
from pydantic import Field
from safetensors.numpy import load_file, save_file

from pgolf.config import ConfigError, Count, CountOrZero, Section, TokenId, VocabSize
from pgolf.errors import PgolfError
from pgolf.files import read_json, write_json

MODEL_FILE = "tokenizer.model"
META_FILE = "meta.json"
LUTS_FILE = "byte_luts.safetensors"
SPACE = "\u2581"


class SpecialIds(Section):
    """Reserved ids; -1 disables pad or eos. BOS starts every document in the shards."""

    pad: TokenId
    bos: TokenId
    eos: TokenId
    unk: TokenId


class TokenizerConfig(Section):
    """The ``tokenizer`` section of params.yaml."""

    vocab_size: VocabSize
    """Number of pieces, specials and byte pieces included (at most 65,536: shards store uint16)."""
    model_type: Literal["bpe", "unigram"]
    byte_fallback: bool
    """Encode characters outside the vocabulary as UTF-8 byte pieces (needed for lossless tokenization)."""
    normalization: Literal["identity", "nmt_nfkc", "nfkc", "nmt_nfkc_cf", "nfkc_cf"]
    remove_extra_whitespaces: bool
    """SentencePiece's whitespace collapsing; false keeps every space and newline."""
    split_digits: bool
    character_coverage: Annotated[float, Field(gt=0.0, le=1.0)]
    caseops: bool
    """Apply the lossless CaseOps case transform before training and encoding."""
    special_ids: SpecialIds
    max_train_chars: CountOrZero
    """Cap on the characters of training text fed to the trainer (0 = all), taken in document order."""
    max_sentence_bytes: Count
    """Training text is cut, at newlines where possible, into sentences of at most this many UTF-8 bytes."""


def load(directory: Path | str) -> spm.SentencePieceProcessor:
    """Load the tokenizer model written by the tokenizer stage."""
    path = Path(directory) / MODEL_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer model missing; run `dvc repro tokenizer`")
    return spm.SentencePieceProcessor(model_file=str(path))


def read_meta(directory: Path | str) -> dict:
    """The tokenizer stage's meta.json (vocabulary, special ids, CaseOps flag, model sha256)."""
    meta = read_json(Path(directory) / META_FILE, "tokenizer")
    if not isinstance(meta, dict) or not {"vocab_size", "bos_id", "caseops", "model_sha256"} <= set(meta):
        raise PgolfError(f"{Path(directory) / META_FILE}: not a tokenizer meta (vocab_size, bos_id, caseops, "
                         "model_sha256 expected); re-run `dvc repro tokenizer`")  # fmt: skip
    return meta


def byte_luts(sp: spm.SentencePieceProcessor) -> dict[str, np.ndarray]:
    """The three BPB lookup tables of the challenge convention (see the module docstring)."""
    vocab = sp.get_piece_size()
    space_id = sp.piece_to_id(SPACE)
    if space_id == sp.unk_id():
        raise ValueError(
            'tokenizer has no standalone "▁" piece; the lookup-table byte count would be wrong '
            "(parameter-golf issue #897)"
        )
    base_bytes = np.zeros(vocab, dtype=np.int16)
    has_leading_space = np.zeros(vocab, dtype=bool)
    is_boundary = np.ones(vocab, dtype=bool)
    for i in range(vocab):
        if sp.is_control(i) or sp.is_unknown(i) or sp.is_unused(i):
            continue
        is_boundary[i] = False
        if sp.is_byte(i):
            base_bytes[i] = 1
            continue
        piece = sp.id_to_piece(i)
        if piece.startswith(SPACE):
            has_leading_space[i] = True
            piece = piece[1:]
        base_bytes[i] = len(piece.replace(SPACE, " ").encode("utf-8"))
    return {"base_bytes": base_bytes, "has_leading_space": has_leading_space, "is_boundary": is_boundary}


def lut_bytes(tokens: np.ndarray, luts: dict[str, np.ndarray]) -> np.ndarray:
    """Bytes charged to each target ``tokens[1:]`` given its previous token, by the lookup tables."""
    prev, target = tokens[:-1].astype(np.int64), tokens[1:].astype(np.int64)
    lead = luts["has_leading_space"][target] & ~luts["is_boundary"][prev]
    return luts["base_bytes"][target].astype(np.int64) + lead


def save(directory: Path | str, model: bytes, meta: dict) -> None:
    """Write model, meta (with model sha256, vocab and special ids read back from the model) and byte tables."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MODEL_FILE).write_bytes(model)
    sp = spm.SentencePieceProcessor(model_proto=model)
    meta = {
        **meta,
        "vocab_size": sp.get_piece_size(),
        "bos_id": sp.bos_id(),
        "eos_id": sp.eos_id(),
        "pad_id": sp.pad_id(),
        "unk_id": sp.unk_id(),
        "model_sha256": hashlib.sha256(model).hexdigest(),
    }
    write_json(directory / META_FILE, meta, sort_keys=True)
    save_file(byte_luts(sp), str(directory / LUTS_FILE))


def load_luts(directory: Path | str) -> dict[str, np.ndarray]:
    """The byte lookup tables written with the tokenizer (the BPB denominator of shards without a sidecar)."""
    path = Path(directory) / LUTS_FILE
    if not path.is_file():
        raise PgolfError(f"{path}: the byte lookup tables are missing; re-run `dvc repro tokenizer`")
    try:
        return load_file(str(path))
    except Exception as err:  # safetensors raises its own error types
        raise PgolfError(f"{path}: unreadable ({err}); re-run `dvc repro tokenizer`") from None


def check_adopted(model: bytes, source: dict, cfg: TokenizerConfig) -> None:
    """ConfigError unless a published tokenizer agrees with the ``tokenizer`` section (vocabulary, CaseOps)."""
    vocab = spm.SentencePieceProcessor(model_proto=model).get_piece_size()
    if vocab != cfg.vocab_size:
        raise ConfigError(
            f"tokenizer.vocab_size={cfg.vocab_size} but the published {source['variant']} tokenizer has {vocab}; "
            "set tokenizer.vocab_size to match data.variant"
        )
    if source["caseops"] != cfg.caseops:
        raise ConfigError(
            f"tokenizer.caseops={cfg.caseops} but the published {source['variant']} data has caseops="
            f"{source['caseops']}; set tokenizer.caseops to match data.variant"
        )
