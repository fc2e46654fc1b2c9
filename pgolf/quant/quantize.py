"""The quantize stage: every tensor of the exported model into its typed format (GPTQ/RTN matrices with SDClip
scales, optional Hadamard rotation, int8 gates, fp16 passthrough), LQER on the top-k errors, per-tensor errors,
and the val_bpb of the dequantized model (the round-trip check).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from pgolf.eval.bpb import load_val
from pgolf.export import MODEL_FILE, ExportConfig, score
from pgolf.model.config import ModelConfig
from pgolf.model.gpt import GPT
from pgolf.quant import formats, gptq, hadamard, lqer
from pgolf.quant.calibrate import HESSIANS_FILE
from pgolf.quant.policy import Decision, QuantizeConfig, decide
from pgolf.train import checkpoint as ckpt


@dataclass
class MatrixResult:
    entry: formats.Entry
    error: Tensor  # W - W_hat in the (possibly rotated) quantization domain
    hessian: Tensor


def quantize_matrix(name: str, w: Tensor, h: Tensor, d: Decision, cfg: QuantizeConfig) -> MatrixResult:
    """GPTQ or RTN of one matrix, in the Hadamard-rotated domain when asked (never the embedding)."""
    rotated = cfg.hadamard and d.kind != "embedding"
    w32 = w.float()
    if rotated:
        w32, h = hadamard.rotate_weight(w32), hadamard.rotate_hessian(h)
    bits = d.spec.bits
    if cfg.method == "gptq":
        scale = gptq.sdclip_scales(w32, d.spec.clip_sigmas, bits)
        q = gptq.gptq_quantize(w32, h, scale, bits, block_size=cfg.block_size, damping=cfg.damping,
                               act_order=cfg.act_order)  # fmt: skip
    else:
        scale = gptq.rtn_percentile_scales(w32, bits, d.spec.rtn_clip_percentile)
        q = gptq.rtn_quantize(w32, scale, bits)
    fmt = formats.QuantizedMatrix(q=q, scale=scale, bits=bits, rotated=rotated)
    error = w32 - scale.float()[:, None] * q.float()
    entry = formats.Entry(name=name, shape=tuple(w.shape), dtype=formats.dtype_name(w.dtype), fmt=fmt, lqer=None)
    return MatrixResult(entry, error, h)


def other_entry(name: str, w: Tensor, d: Decision) -> formats.Entry:
    if d.kind == "gate":
        fmt: formats.QuantizedTensor = gptq.quantize_gate_int8_row(w)
    else:
        fmt = formats.Passthrough(value=w.detach().half(), dtype=formats.dtype_name(w.dtype))
    return formats.Entry(name=name, shape=tuple(w.shape), dtype=formats.dtype_name(w.dtype), fmt=fmt, lqer=None)


def add_lqer(results: dict[str, MatrixResult], cfg: QuantizeConfig) -> list[str]:
    """Low-rank corrections for the top-k matrices by ||W - W_hat||_F; returns their names."""
    if not cfg.lqer.enabled:
        return []
    chosen = lqer.select_top_k({n: float(r.error.norm()) for n, r in results.items()}, cfg.lqer.top_k)
    for name in chosen:
        r = results[name]
        a, b = lqer.low_rank_residual(r.error, cfg.lqer.rank)
        if cfg.lqer.mode == "asym" and b.numel() % cfg.lqer.group == 0:
            correction = lqer.pack_asym(a, b, cfg.lqer.group)
        else:
            correction = lqer.pack_sym(a, b, cfg.lqer.factor_bits)
        r.error = r.error - lqer.unpack(correction)
        e = r.entry
        r.entry = formats.Entry(name=e.name, shape=e.shape, dtype=e.dtype, fmt=e.fmt, lqer=correction)
    return chosen


def tensor_report(name: str, w: Tensor, r: MatrixResult, d: Decision) -> dict:
    layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
    return {"name": name, "layer": layer, "kind": d.kind, "bits": d.spec.bits, "numel": w.numel(),
            "rel_error": float(r.error.norm() / w.float().norm().clamp_min(1e-12)),
            "h_error": float(torch.einsum("ij,jk,ik->", r.error, r.hessian, r.error)),
            "lqer": r.entry.lqer is not None}  # fmt: skip


def quantize_state(
    state: dict[str, Tensor], hessians: dict[str, Tensor], decisions: dict[str, Decision], cfg: QuantizeConfig
) -> tuple[list[formats.Entry], list[dict], list[str]]:
    """Entries for every tensor (in state order), the per-matrix reports, and the LQER choice."""
    results: dict[str, MatrixResult] = {}
    others: dict[str, formats.Entry] = {}
    for name, w in state.items():
        d = decisions[name]
        if d.spec is None:
            others[name] = other_entry(name, w, d)
        else:
            if name not in hessians:
                raise KeyError(f"{name}: no Hessian in artifacts/calibrate; re-run `dvc repro calibrate`")
            results[name] = quantize_matrix(name, w, hessians[name], d, cfg)
    chosen = add_lqer(results, cfg)
    reports = [tensor_report(n, state[n], r, decisions[n]) for n, r in results.items()]
    entries = [results[n].entry if n in results else others[n] for n in state]
    return entries, reports, chosen


def dequantized_model(entries: list[formats.Entry], model_cfg: ModelConfig) -> GPT:
    model = GPT(model_cfg)
    model.load_state_dict(formats.dequantized_state(entries))
    return model


def run_quantize(cfg: QuantizeConfig, eval_cfg: ExportConfig, paths: dict[str, Path]) -> dict:
    """Quantize artifacts/export with artifacts/calibrate's Hessians into artifacts/quant; returns the metrics."""
    start = time.perf_counter()
    state, meta = ckpt.load_tensors(paths["export"] / MODEL_FILE)
    hessians, _ = ckpt.load_tensors(paths["calibrate"] / HESSIANS_FILE)
    model_cfg = ModelConfig.model_validate(meta["model_config"])
    decisions = decide(GPT(model_cfg), cfg)
    entries, reports, chosen = quantize_state(state, hessians, decisions, cfg)
    seconds = time.perf_counter() - start
    tensors, manifest = formats.to_tensors(entries)
    out = paths["out"]
    out.mkdir(parents=True, exist_ok=True)
    ckpt.save_tensors(out / formats.QUANT_FILE, tensors, {})
    full = {"formats": manifest, "model_config": meta["model_config"], "train": {k: meta[k] for k in
            ("steps", "looping_from_step", "averaging")}, "quantize": cfg.model_dump()}  # fmt: skip
    (out / formats.MANIFEST_FILE).write_text(json.dumps(full, indent=2) + "\n")
    val = load_val(paths["shards"], paths["tokenizer"])
    looped = meta["looping_from_step"] is not None
    roundtrip = score(dequantized_model(entries, model_cfg), val, eval_cfg, looped)
    return {"quantized": roundtrip, "lqer_tensors": chosen, "quantize_seconds": round(seconds, 2),
            "tensors": reports}  # fmt: skip


def write_metrics(metrics: dict, summary_path: Path, tensors_path: Path) -> None:
    """Summary JSON (dvc metrics) and one CSV row per matrix (dvc plots: error by layer and kind)."""
    rows = metrics["tensors"]
    summary = {k: v for k, v in metrics.items() if k != "tensors"}
    summary["mean_rel_error"] = sum(r["rel_error"] for r in rows) / max(len(rows), 1)
    summary["total_h_error"] = sum(r["h_error"] for r in rows)
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    columns = ["name", "layer", "kind", "bits", "numel", "rel_error", "h_error", "lqer"]
    lines = [",".join(columns)] + [",".join(str(r[c]) for c in columns) for r in rows]
    tensors_path.write_text("\n".join(lines) + "\n")
