"""What leaves training: the chosen weights (EMA, SWA or raw) cast to their final dtypes (``export`` section).

The chosen weights are scored with the values they are exported with (a bf16 embedding is rounded to bf16) in the
same fp32 arithmetic as every other rung (:mod:`pgolf.score.scorer` scores fp32 copies).
"""

from __future__ import annotations

from typing import Literal

import torch

from pgolf import tensorio
from pgolf.config import Section
from pgolf.model.gpt import EMBEDDING, GPT


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
