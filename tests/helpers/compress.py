"""The compress tests' material: a quantize-stage output of the toy model, a submission made from it (the compress
and bundle stages), entries of several roles for the coding pool."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from pgolf import tensorio
from pgolf.compress.bundle import PROGRAM_FILE
from pgolf.config import read_params
from pgolf.model.gpt import GPT
from pgolf.quant import formats
from pgolf.quant.policy import decide
from pgolf.quant.quantize import quantize_state
from tests.helpers.common import ROOT
from tests.helpers.config import compress_cfg, model_cfg, quantize_cfg

HAVE_LRZIP = shutil.which("lrzip") is not None


def write_submission(quant: Path, out: Path, **overrides) -> dict:
    """compress then bundle, as DVC runs them: model.bin and the code file in ``out``; the compress metrics."""
    from stages import bundle as bundle_stage
    from stages import compress as compress_stage

    metrics = compress_stage.compress(
        compress_cfg(**overrides), compress_stage.Paths(quant=quant, out=out, metrics=out.parent / "compress.json")
    )
    bundle_stage.bundle(submission_params(**overrides), bundle_stage.Paths(out=out / PROGRAM_FILE), ROOT)
    return metrics


def submission_params(**compress: object) -> dict:
    """params.yaml with ``compress`` overrides (the program carries the coder the params select)."""
    params = read_params(ROOT / "params.yaml")
    params["compress"].update(compress)
    return params


def write_quant_dir(out: Path, **model_overrides) -> Path:
    """A quantize-stage output of a small perturbed model: GPTQ with Hessians, int8 gates, passthrough, LQER."""
    torch.manual_seed(0)
    model = GPT(model_cfg(**model_overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    qcfg = quantize_cfg()
    decisions = decide(model, qcfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hessians = {}
    for name, d in decisions.items():
        if d.spec is not None:
            x = torch.randn(4 * state[name].shape[1], state[name].shape[1])
            hessians[name] = x.T @ x
    entries, _, chosen = quantize_state(state, hessians, decisions, qcfg)
    assert chosen, "the fixture should exercise LQER"
    out.mkdir(parents=True, exist_ok=True)
    tensors, manifest = formats.to_tensors(entries)
    tensorio.save_tensors(out / "quantized.safetensors", tensors, {})
    meta = {"formats": manifest, "model_config": model.cfg.model_dump(mode="json"), "train": {"looping_from_step": 3}}
    (out / "manifest.json").write_text(json.dumps(meta))
    return out


def pool_entries(layers: int = 3) -> list[formats.Entry]:
    """Four integer groups (two sorted by the default simsort list), per-row scales, and a passthrough tensor."""
    g = torch.Generator().manual_seed(0)
    shapes = {"attn.q.weight": (24, 16), "attn.k.weight": (8, 16), "mlp.up.weight": (40, 16)}
    entries = []
    for layer in range(layers):
        for role, (rows, cols) in shapes.items():
            q = torch.randint(-15, 16, (rows, cols), generator=g, dtype=torch.int8)
            fmt = formats.QuantizedMatrix(q=q, scale=torch.rand(rows, generator=g).half() + 0.01, bits=5, rotated=False)
            entries.append(formats.Entry(f"blocks.{layer}.{role}", (rows, cols), "float32", fmt, None))
        norm = formats.Passthrough(value=torch.randn(16, generator=g).half(), dtype="float32")
        entries.append(formats.Entry(f"blocks.{layer}.scale", (16,), "float32", norm, None))
    emb = formats.QuantizedMatrix(q=torch.randint(-63, 64, (50, 16), generator=g, dtype=torch.int8),
                                  scale=torch.rand(50, generator=g).half() + 0.01, bits=7, rotated=False)  # fmt: skip
    entries.append(formats.Entry("tok_emb.weight", (50, 16), "bfloat16", emb, None))
    return entries
