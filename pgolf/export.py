"""The export stage: pick the final weights (EMA, SWA or raw), cast them to their final dtypes, and measure the
pre-quantization val_bpb of the raw and the chosen weights through :mod:`pgolf.eval.bpb`.

The model is rebuilt from the configuration stored with the checkpoint, never from params.yaml, and evaluated with
the layer schedule it finished training with (recurrence on if it was switched on).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from pgolf import dist
from pgolf.config import ConfigError, Section
from pgolf.data import shards as shard_io
from pgolf.eval.bpb import ValData, evaluate, evaluate_model, load_val
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.train import checkpoint as ckpt
from pgolf.train.checkpoint import META_FILE, RAW_FILE

MODEL_FILE = "model.safetensors"
UNIGRAM_MAX_TOKENS = 100_000_000
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ExportConfig(Section):
    weights: Literal["ema", "swa", "raw"]
    """Which weights leave training (the record: ema)."""
    dtype: Literal["float32", "bfloat16", "float16"]
    """Final dtype of every floating tensor but the embedding."""
    embedding_dtype: Literal["float32", "bfloat16", "float16"]
    """Final dtype of the tied embedding (the record keeps it in bf16)."""
    eval_seq_len: int
    """Window of the doc-isolated, non-overlapping pre-quantization evaluation."""
    eval_batch_windows: int


def load_trained(train_dir: Path, which: str) -> tuple[GPT, dict]:
    """A model holding the ``which`` weights of the train stage, and the train meta."""
    meta = json.loads((train_dir / META_FILE).read_text())
    if which != "raw" and which != meta["averaging"]:
        raise ConfigError(
            f"export.weights={which} but training kept {meta['averaging']} weights "
            f"(train.averaging.kind); set export.weights to raw or {meta['averaging']}"
        )
    tensors, _ = ckpt.load_tensors(train_dir / (RAW_FILE if which == "raw" else f"{which}.safetensors"))
    model = GPT(ModelConfig.model_validate(meta["model_config"]))
    model.load_state_dict(tensors)
    return model, meta


def load_exported(export_dir: Path) -> tuple[GPT, dict]:
    """The exported model (parameters in fp32 holding the exported values) and its meta."""
    tensors, meta = ckpt.load_tensors(export_dir / MODEL_FILE)
    model = GPT(ModelConfig.model_validate(meta["model_config"]))
    model.load_state_dict(tensors)
    return model, meta


def cast_final(model: GPT, cfg: ExportConfig) -> GPT:
    """Cast parameters to the final dtypes (embedding apart)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.data = p.data.to(DTYPES[cfg.embedding_dtype if name == "tok_emb.weight" else cfg.dtype])
    return model


def score(model: GPT, val: ValData, cfg: ExportConfig, looped: bool) -> dict:
    """val_loss / val_bpb of ``model`` on the whole validation stream."""
    start = time.perf_counter()
    totals = evaluate_model(model, val, seq_len=cfg.eval_seq_len, batch_windows=cfg.eval_batch_windows, looped=looped,
                            progress=True)  # fmt: skip
    return {"val_loss": totals.val_loss, "val_bpb": totals.val_bpb, "tokens": totals.tokens,
            "bytes": totals.bytes, "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def unigram_log_probs(shard_dir: Path, vocab_size: int, max_tokens: int = UNIGRAM_MAX_TOKENS) -> torch.Tensor:
    """log p(token) of an add-one-smoothed unigram model counted on the training shards (the first max_tokens)."""
    counts = np.ones(vocab_size, dtype=np.int64)
    seen = 0
    for path in shard_io.shard_paths(shard_dir, "train"):
        tokens = shard_io.read_shard(path, mmap=True)[: max_tokens - seen]
        counts += np.bincount(tokens, minlength=vocab_size)[:vocab_size]
        seen += len(tokens)
        if seen >= max_tokens:
            break
    return torch.from_numpy(np.log(counts) - np.log(counts.sum()))


def score_unigram(log_probs: torch.Tensor, val, cfg: ExportConfig, bos_id: int) -> dict:
    """The baseline every model must beat: the same val targets scored by the unigram model."""
    totals = evaluate(lambda x, y, cu: -log_probs[y], val, seq_len=cfg.eval_seq_len,
                      batch_windows=cfg.eval_batch_windows, bos_id=bos_id)  # fmt: skip
    return {"val_loss": totals.val_loss, "val_bpb": totals.val_bpb, "tokens": totals.tokens, "bytes": totals.bytes}


def export(cfg: ExportConfig, train_dir: Path, shards: Path, tokenizer: Path, out: Path) -> dict:
    """Write the chosen weights + meta into ``out``; return the metrics (pre-quant bpb of raw and chosen)."""
    chosen, meta = load_trained(train_dir, cfg.weights)
    chosen = cast_final(chosen, cfg)
    looped = meta["looping_from_step"] is not None
    val = load_val(shards, tokenizer)
    metrics = {"weights": cfg.weights, "byte_count": val.byte_count, "looped": looped}
    metrics[f"prequant_{cfg.weights}"] = score(chosen, val, cfg, looped)
    if cfg.weights != "raw":
        raw, _ = load_trained(train_dir, "raw")
        metrics["prequant_raw"] = score(raw, val, cfg, looped)
    unigram = unigram_log_probs(shards, chosen.cfg.vocab_size)
    metrics["unigram_baseline"] = score_unigram(unigram, val, cfg, chosen.cfg.bos_id)
    if dist.dist_info().is_main:
        out.mkdir(parents=True, exist_ok=True)
        export_meta = {**meta, "weights": cfg.weights, "dtype": cfg.dtype, "embedding_dtype": cfg.embedding_dtype}
        ckpt.save_tensors(out / MODEL_FILE, chosen.state_dict(), export_meta)
        (out / META_FILE).write_text(json.dumps(export_meta, indent=2) + "\n")
    return metrics
