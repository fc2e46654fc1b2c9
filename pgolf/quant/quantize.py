"""Every tensor of the exported model into its typed format (GPTQ/RTN matrices with SDClip
scales, optional Hadamard rotation, int8 gates, fp16 passthrough), LQER on the top-k errors, per-tensor errors,
and the val_bpb of the dequantized model (the round-trip check).

With ``quantize.awq`` on (AWQ-lite, #1908), the column groups with the largest activation-weighted
weight magnitude (:mod:`pgolf.quant.awq`: act_rms[c] = sqrt(diag(H)[c] / rows), score = sum over the group of
act_rms[c] * mean_rows |W[:, c]|) are chosen first, over the whole model or per matrix, among the GPTQ matrices with
more than ``awq.min_elements`` elements and fewer bits than ``awq.bits``; GPTQ then rounds those columns on the finer
``awq.bits`` grid with a second per-row step s_hi, and LQER is fitted on the residual of that grid. The chosen
groups are reported per tensor (column ``awq``) and in quantize.json (``awq_groups``).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from pgolf import tensorio
from pgolf.artifacts import build_model
from pgolf.errors import PgolfError
from pgolf.model.gpt import GPT
from pgolf.quant import formats, gptq, lqer
from pgolf.quant.policy import Decision, QuantizeConfig


@dataclass
class MatrixResult:
    entry: formats.Entry
    target: Tensor  # W in fp32, in the (possibly Hadamard-rotated) quantization domain
    hessian: Tensor  # H in the same domain

    @property
    def error(self) -> Tensor:
        """W - W_hat in the quantization domain, after the entry's LQER correction when it has one."""
        return lqer.quantization_residual(self.target, self.entry.fmt, self.entry.lqer)


def quantization_domain(w: Tensor, h: Tensor, d: Decision, cfg: QuantizeConfig) -> tuple[Tensor, Tensor, bool]:
    """(W in fp32, H, rotated): Hadamard-rotated when asked (never the embedding)."""
    rotated = cfg.hadamard and d.kind != "embedding"
    w32 = w.float()
    if rotated:
        from pgolf.quant import hadamard  # only quantize.hadamard runs it (the submission program carries it then)

        w32, h = hadamard.rotate_weight(w32), hadamard.rotate_hessian(h)
    return w32, h, rotated


def quantize_matrix(
    name: str, w: Tensor, h: Tensor, d: Decision, cfg: QuantizeConfig, awq_starts: tuple[int, ...] = ()
) -> MatrixResult:
    """GPTQ or RTN of one matrix, in the Hadamard-rotated domain when asked (never the embedding); the AWQ-lite
    groups starting at ``awq_starts`` (columns of that domain) on the ``cfg.awq.bits`` grid."""
    w32, h, rotated = quantization_domain(w, h, d, cfg)
    bits = d.spec.bits
    protected = None
    if cfg.method == "gptq":
        scale = gptq.sdclip_scales(w32, d.spec.clip_sigmas, bits)
        if awq_starts:
            fine = gptq.sdclip_scales(w32, d.spec.clip_sigmas, cfg.awq.bits)
            protected = formats.ProtectedGroups(awq_starts, cfg.awq.group_size, fine, cfg.awq.bits)
        q = gptq.gptq_quantize(w32, h, scale, bits, block_size=cfg.block_size, damping=cfg.damping,
                               act_order=cfg.act_order, inverse=cfg.inverse, protected=protected)  # fmt: skip
    else:
        if awq_starts:
            raise ValueError(f"{name}: AWQ-lite groups need method gptq")
        scale = gptq.rtn_percentile_scales(w32, bits, d.spec.rtn_clip_percentile)
        q = gptq.rtn_quantize(w32, scale, bits)
    fmt = formats.QuantizedMatrix(q=q, scale=scale, bits=bits, rotated=rotated, protected=protected)
    entry = formats.Entry(name=name, shape=tuple(w.shape), dtype=tensorio.dtype_name(w.dtype), fmt=fmt, lqer=None)
    return MatrixResult(entry, w32, h)


def other_entry(name: str, w: Tensor, d: Decision) -> formats.Entry:
    if d.kind == "gate":
        fmt: formats.QuantizedTensor = gptq.quantize_gate_int8_row(w)
    else:
        fmt = formats.Passthrough(value=w.detach().half(), dtype=tensorio.dtype_name(w.dtype))
    return formats.Entry(name=name, shape=tuple(w.shape), dtype=tensorio.dtype_name(w.dtype), fmt=fmt, lqer=None)


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
        e = r.entry
        r.entry = formats.Entry(name=e.name, shape=e.shape, dtype=e.dtype, fmt=e.fmt, lqer=correction)
    return chosen


def awq_candidates(
    state: dict[str, Tensor], hessians: dict[str, Tensor], decisions: dict[str, Decision], cfg: QuantizeConfig,
    rows: dict[str, int],
) -> dict[str, Tensor]:  # fmt: skip
    """AWQ-lite group scores of every candidate, in state order: GPTQ matrices with more than ``awq.min_elements``
    elements, fewer bits than ``awq.bits``, activation statistics (an entry in ``rows``, the Hessians' row counts)
    and at least one full group; scored in the quantization domain."""
    from pgolf.quant import awq  # only quantize.awq runs it (the submission program carries it then)

    scores = {}
    for name, w in state.items():
        d = decisions[name]
        if d.spec is None or w.numel() <= cfg.awq.min_elements or d.spec.bits >= cfg.awq.bits or name not in rows:
            continue
        if w.shape[1] < cfg.awq.group_size:
            continue
        w32, h, _ = quantization_domain(w, hessians[name], d, cfg)
        scores[name] = awq.group_scores(w32, awq.activation_rms(h, rows[name]), cfg.awq.group_size)
    return scores


def choose_awq_groups(
    state: dict[str, Tensor], hessians: dict[str, Tensor], decisions: dict[str, Decision], cfg: QuantizeConfig,
    rows: dict[str, int] | None,
) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """The AWQ-lite group starts of each tensor that gets any (empty when ``quantize.awq`` is off)."""
    if not cfg.awq.enabled:
        return {}
    if rows is None:
        raise ValueError("quantize.awq is on: the Hessians' row counts (pgolf.quant.hessian.hessian_rows) are needed")
    scores = awq_candidates(state, hessians, decisions, cfg, rows)
    from pgolf.quant import awq

    return awq.starts_by_tensor(awq.select_groups(scores, cfg.awq.top_k, cfg.awq.scope), cfg.awq.group_size)


def tensor_report(name: str, r: MatrixResult, d: Decision) -> dict:
    """One matrix's errors as stored (LQER included), in the quantization domain; the rotation is orthogonal, so
    both equal those of the dequantized weight against W and the unrotated H. ``awq``: the first columns of its
    AWQ-lite groups, space-separated ("" for none)."""
    layer = int(name.split(".")[1]) if name.startswith("blocks.") else -1
    error = r.error
    protected = r.entry.fmt.protected
    return {"name": name, "layer": layer, "kind": d.kind, "bits": d.spec.bits, "numel": r.target.numel(),
            "rel_error": gptq.relative_error(error, r.target), "h_error": gptq.hessian_error(error, r.hessian),
            "lqer": r.entry.lqer is not None,
            "awq": "" if protected is None else " ".join(map(str, protected.starts))}  # fmt: skip


def quantize_state(
    state: dict[str, Tensor],
    hessians: dict[str, Tensor],
    decisions: dict[str, Decision],
    cfg: QuantizeConfig,
    rows: dict[str, int] | None = None,
) -> tuple[list[formats.Entry], list[dict], list[str]]:
    """Entries for every tensor (in state order), the per-matrix reports, and the LQER choice; ``rows``: the rows
    summed into each Hessian (:func:`~pgolf.quant.hessian.hessian_rows`), needed when ``quantize.awq`` is on."""
    missing = [name for name in state if decisions[name].spec is not None and name not in hessians]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise PgolfError(
            f"quantize: no Hessian for {', '.join(map(repr, missing[:3]))}{more} among the {len(hessians)} in "
            "artifacts/calibrate (collected for another model or policy); re-run `dvc repro calibrate` on this export"
        )
    groups = choose_awq_groups(state, hessians, decisions, cfg, rows)
    results: dict[str, MatrixResult] = {}
    others: dict[str, formats.Entry] = {}
    for name, w in state.items():
        d = decisions[name]
        if d.spec is None:
            others[name] = other_entry(name, w, d)
        else:
            results[name] = quantize_matrix(name, w, hessians[name], d, cfg, groups.get(name, ()))
    chosen = add_lqer(results, cfg)
    reports = [tensor_report(n, r, decisions[n]) for n, r in results.items()]
    entries = [results[n].entry if n in results else others[n] for n in state]
    return entries, reports, chosen


def dequantized_model(entries: list[formats.Entry], model_config: dict) -> GPT:
    """The GPT holding the dequantized weights, exactly as the evaluate stage rebuilds it from model.bin."""
    return build_model(model_config, formats.dequantized_state(entries))
