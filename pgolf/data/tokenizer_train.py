"""Training the SentencePiece tokenizer (the tokenizer stage, for the sources that are not published shards):
data preparation, outside the counted program as in the challenge, which adopts the published tokenizer."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator

import sentencepiece as spm

from pgolf.data import caseops
from pgolf.data.tokenizer import TokenizerConfig


def training_sentences(docs: Iterable[str], cfg: TokenizerConfig) -> Iterator[str]:
    """The trainer's input: each (transformed) document cut into sentences, stopping at ``max_train_chars``."""
    budget = cfg.max_train_chars or None
    for doc in docs:
        text = caseops.encode(doc) if cfg.caseops else doc
        for sentence in _cut(text, cfg.max_sentence_bytes):
            if budget is not None:
                if budget <= 0:
                    return
                sentence = sentence[:budget]
                budget -= len(sentence)
            yield sentence


def _cut(text: str, max_bytes: int) -> Iterator[str]:
    """Split ``text`` into pieces of at most ``max_bytes`` UTF-8 bytes, preferring to cut after a newline."""
    while len(text.encode("utf-8")) > max_bytes:
        head = text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")
        newline = head.rfind("\n")
        cut = newline + 1 if newline > 0 else len(head)
        yield text[:cut]
        text = text[cut:]
    if text:
        yield text


def train(docs: Iterable[str], cfg: TokenizerConfig, num_threads: int) -> bytes:
    """Train a SentencePiece model on ``docs`` (training documents only) and return its serialized bytes."""
    model = io.BytesIO()
    ids = cfg.special_ids
    spm.SentencePieceTrainer.train(
        sentence_iterator=training_sentences(docs, cfg),
        model_writer=model,
        vocab_size=cfg.vocab_size,
        model_type=cfg.model_type,
        byte_fallback=cfg.byte_fallback,
        normalization_rule_name=cfg.normalization,
        remove_extra_whitespaces=cfg.remove_extra_whitespaces,
        add_dummy_prefix=False,
        split_digits=cfg.split_digits,
        character_coverage=cfg.character_coverage,
        pad_id=ids.pad,
        bos_id=ids.bos,
        eos_id=ids.eos,
        unk_id=ids.unk,
        user_defined_symbols=list(caseops.OPERATORS) if cfg.caseops else [],
        max_sentence_length=cfg.max_sentence_bytes,
        hard_vocab_limit=False,
        num_threads=num_threads,
        minloglevel=2,
    )
    return model.getvalue()
