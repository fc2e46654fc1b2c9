"""The export stage: pick the final weights (EMA, SWA or raw), cast them to their final dtypes, and score the
pre-quantization rungs of the ladder: the raw weights, the chosen weights as exported, and the unigram baseline,
all through the one scorer (:func:`pgolf.eval.score.score_model`) on the ``score`` section's documents.

The model is rebuilt from the configuration stored with the checkpoint, never from params.yaml, and evaluated with
the layer schedule it finished training with (recurrence on if it was switched on). The chosen weights are scored
with the values they are exported with (a bf16 embedding is rounded to bf16) in the same fp32 arithmetic as
every other rung.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pgolf import artifacts, dist, tensorio
from pgolf.config import Section
from pgolf.data import shards as shard_io
from pgolf.eval.bpb import ValData, load_val
from pgolf.eval.common import EvalContext
from pgolf.eval.score import ScoreConfig, document_set, rung, score_model, score_token_model, scored_documents
from pgolf.model.gpt import EMBEDDING, GPT

UNIGRAM_MAX_TOKENS = 100_000_000


class ExportConfig(Section):
    weights: Literal["ema", "swa", "raw"]
    """Which weights leave training (the record: ema)."""
    dtype: Literal["float32", "bfloat16", "float16"]
    """Final dtype of every floating tensor but the embedding."""
    embedding_dtype: Literal["float32", "bfloat16", "float16"]
    """Final dtype of the tied embedding (the record keeps it in bf16)."""


def cast_final(model: GPT, cfg: ExportConfig) -> GPT:
    """Cast parameters to the final dtypes (embedding apart)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(tensorio.torch_dtype(cfg.embedding_dtype if name == EMBEDDING else cfg.dtype))
    return model


def unigram_log_probs(shard_dir: Path, vocab_size: int, max_tokens: int = UNIGRAM_MAX_TOKENS) -> torch.Tensor:
    """log p(token) of an add-one-smoothed unigram model counted on the training shards (the first max_tokens)."""
    counts = np.ones(vocab_size, dtype=np.int64)
    seen = 0
    for path in shard_io.shard_paths(shard_dir, "train"):
        tokens = shard_io.read_shard(path, vocab_size=vocab_size, mmap=True)[: max_tokens - seen]
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        seen += len(tokens)
        if seen >= max_tokens:
            break
    return torch.from_numpy(np.log(counts) - np.log(counts.sum()))


def prequant_rungs(chosen: GPT, raw: GPT | None, which: str, val: ValData, score: ScoreConfig, looped: bool,
                   shard_dir: Path) -> dict:  # fmt: skip
    """The pre-quantization rungs: ``prequant_<which>`` (the chosen weights as exported), ``prequant_raw`` and
    the unigram baseline, on the ``score`` section's documents; with the document set that names them."""
    info = dist.dist_info()
    ctx = EvalContext(looped, info.rank, info.world_size, progress=info.is_main)
    docs = scored_documents(val, score, chosen.cfg.bos_id)
    out = {"documents": document_set(val, docs), "byte_count": val.byte_count, "looped": looped, "weights": which}
    out[f"prequant_{which}"] = rung(score_model(chosen.to(info.device), val, docs, score, ctx, name=which))
    if raw is not None:
        out["prequant_raw"] = rung(score_model(raw.to(info.device), val, docs, score, ctx, name="raw"))
    unigram = unigram_log_probs(shard_dir, chosen.cfg.vocab_size).to(info.device)
    out["unigram_baseline"] = rung(score_token_model(unigram, val, docs, score, ctx))
    return out


def export(cfg: ExportConfig, score: ScoreConfig, train_dir: Path, shards: Path, tokenizer: Path, out: Path) -> dict:
    """Write the chosen weights + meta into ``out``; return the metrics (the pre-quantization rungs)."""
    chosen, meta = artifacts.load_trained(train_dir, cfg.weights)
    chosen = cast_final(chosen, cfg)
    looped = meta["looping_from_step"] is not None
    raw = artifacts.load_trained(train_dir, "raw")[0] if cfg.weights != "raw" else None
    metrics = prequant_rungs(chosen, raw, cfg.weights, load_val(shards, tokenizer), score, looped, shards)
    if dist.dist_info().is_main:
        out.mkdir(parents=True, exist_ok=True)
        export_meta = {**meta, "weights": cfg.weights, "dtype": cfg.dtype, "embedding_dtype": cfg.embedding_dtype}
        tensorio.save_tensors(out / artifacts.MODEL_FILE, chosen.state_dict(), export_meta)
        (out / artifacts.META_FILE).write_text(json.dumps(export_meta, indent=2) + "\n")
    return metrics
