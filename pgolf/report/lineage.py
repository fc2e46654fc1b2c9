"""The technique table of a records README: one row per technique a run's params turn on, with its PR lineage.

A row names the technique, its setting (the params keys that turn it on, as ``section: key=value``) and ``From``:
pull requests of openai/parameter-golf, only as this repository's notes state them. That is the earliest seed PR of
``presets/`` (#374, #1492, #1802, #2143) the notes show with the technique, then ``#1855 (record)`` when the record
has it too; or the PR that a params.yaml comment or the frontier notes name as the knob's source (#2014 for the
sequence schedule); ``#1855`` alone where the notes say the record added it; ``—`` where no note names one. It says
where the recipe was taken from, not who invented it. Each entry's comment names the file and section stating it:
params.yaml, presets/, or the specs ``record-*.md``, ``other-seeds.md`` (§7 is its combined feature table) and
``frontier.md`` and the seed cards ``seeds/pr*.txt`` of the shared notes. Every number cited also appears in
params.yaml, presets/*.yaml or presets/make_presets.py, so tests/report/test_lineage.py checks it without the notes.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pgolf.config import dotted as get  # the value at a dotted key; a missing key is a KeyError naming it

STAGES = ("model", "train", "quantize", "compress", "eval")
RECORD = "#1855 (record)"
NONE = "—"
QUANT_KINDS = ("embedding", "q", "k", "v", "o", "up", "down")
HEADER = "| Technique | Setting | From |\n|---|---|---|"

Predicate = Callable[[dict], bool]


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, bool | list | dict) else str(value)
    return text.replace("|", "\\|")


@dataclass(frozen=True)
class Technique:
    """A table row: ``on(params)`` says whether the run uses it; ``setting`` is the dotted keys shown as key=value
    (or a function of the params); ``lineage`` is the From cell."""

    stage: str
    name: str
    on: Predicate
    setting: tuple[str, ...] | Callable[[dict], str]
    lineage: str

    def row(self, params: dict) -> str:
        """The markdown row of this technique for these params."""
        if callable(self.setting):
            shown = self.setting(params)
        else:
            groups: dict[str, list[str]] = {}
            for key in self.setting:
                prefix, _, leaf = key.rpartition(".")
                groups.setdefault(prefix, []).append(f"{leaf}={_show(get(params, key))}")
            shown = "; ".join(f"{prefix}: {', '.join(items)}" for prefix, items in groups.items())
        return f"| {self.name} | {shown} | {self.lineage} |"


def _k(prefix: str, *leaves: str) -> tuple[str, ...]:
    return tuple(f"{prefix}.{leaf}" for leaf in leaves)


def _on(key: str) -> Predicate:
    return lambda p: bool(get(p, key))


def _is(key: str, value: Any) -> Predicate:
    return lambda p: get(p, key) == value


def _both(first: Predicate, second: Predicate) -> Predicate:
    return lambda p: first(p) and second(p)


def _ttt(knob: Predicate | str) -> Predicate:
    """On when the phased LoRA TTT runs and its ``knob`` (a dotted key that must be set, or a predicate) holds."""
    return _both(_on("eval.lora_ttt.enabled"), _on(knob) if isinstance(knob, str) else knob)


def _bits(p: dict) -> str:
    bits = ", ".join(f"{kind} {get(p, f'quantize.{kind}.bits')}" for kind in QUANT_KINDS)
    return f"quantize: method={get(p, 'quantize.method')}; bits: {bits}"


def _int5(p: dict) -> str:
    return "quantize: " + ", ".join(f"{k}.bits={get(p, f'quantize.{k}.bits')}" for k in QUANT_KINDS[1:] if _low(p, k))


def _low(p: dict, kind: str) -> bool:
    return get(p, f"quantize.{kind}.bits") <= 5


def _partial_rope(p: dict) -> bool:
    return 0 < get(p, "model.rope_dims") < get(p, "model.model_dim") // get(p, "model.num_heads")


def _long_context(p: dict) -> bool:
    train = get(p, "train.seq_len")
    return get(p, "score.seq_len") > train or _ttt(lambda q: get(q, "eval.lora_ttt.context") > train)(p)


M, T, Q, C, E = STAGES
LORA, TILT, MUON, AVG = "eval.lora_ttt", "eval.lora_ttt.ngram_tilt", "train.muon", "train.averaging"
TECHNIQUES: tuple[Technique, ...] = (
    # other-seeds.md §2.2 (#1492: "Identical schedule to #1855: layers 3–5, 3 passes"), record-model-training.md §0
    Technique(M, "Depth recurrence", _on("model.num_loops"),
              (*_k("model", "num_loops", "loop_start", "loop_end"), "train.enable_looping_at"), "#1492, " + RECORD),
    # other-seeds.md §7 "U-Net skips": sigmoid-gated in #1855, "same" in #1492 (#374: plain additive)
    Technique(M, "Sigmoid-gated U-Net skips", _on("model.skip_gates"), ("model.skip_gates",), "#1492, " + RECORD),
    # record-model-training.md §0 ("two-lane parallel residual decoder for layers 8–10"), other-seeds.md §1
    Technique(M, "Parallel residuals, two lanes", _is("model.parallel_mode", "two_lane"),
              _k("model", "parallel_mode", "parallel_start_layer"), RECORD),
    # other-seeds.md §2.2 "GPT-J parallel residuals from physical layer 7" (#1492; also #1802, #2143 per §7)
    Technique(M, "Parallel residuals, GPT-J", _is("model.parallel_mode", "gptj"),
              _k("model", "parallel_mode", "parallel_start_layer"), "#1492"),
    # seeds/pr374.txt ("XSA ... last 4 layers"), record-model-training.md §1b (all 11 layers)
    Technique(M, "XSA (exclusive self-attention)", _on("model.xsa_last_n"), ("model.xsa_last_n",), "#374, " + RECORD),
    # seeds/pr374.txt ("Partial RoPE", 16 of 64 dims), record-model-training.md §1b rope_dims 16
    Technique(M, "Partial RoPE", _partial_rope, _k("model", "rope_dims", "rope_base"), "#374, " + RECORD),
    # seeds/pr374.txt ("with NTK-aware scaling"), other-seeds.md §7 "Partial RoPE"; make_presets.py PR374
    Technique(M, "NTK RoPE rescale", _on("model.rope_ntk_scale"), ("model.rope_ntk_scale",), "#374"),
    # seeds/pr374.txt title ("LN Scale"), record-model-training.md §1b ln_scale
    Technique(M, "LN scale 1/sqrt(layer+1)", _on("model.ln_scale"), ("model.ln_scale",), "#374, " + RECORD),
    # other-seeds.md §7 "Logit softcap": 30 in #374 and #1855
    Technique(M, "Logit softcap", _on("model.logit_softcap"), ("model.logit_softcap",), "#374, " + RECORD),
    # other-seeds.md §7 "MLP": 4x LeakyReLU(0.5)² in #1855, "same" in #1492
    Technique(M, "LeakyReLU² MLP", _is("model.mlp_activation", "leaky_relu2"),
              _k("model", "mlp_activation", "mlp_leaky_slope"), "#1492, " + RECORD),
    # params.yaml mlp_leaky_slope ("#1948/#2140: 0.3"), frontier.md §3.12
    Technique(M, "LeakyReLU² slope 0.3", _both(_is("model.mlp_activation", "leaky_relu2"),
              _is("model.mlp_leaky_slope", 0.3)), ("model.mlp_leaky_slope",), "#1948, #2140"),
    # record-model-training.md §1b (sparse_attn_gate_enabled 1, scale 0.5), other-seeds.md §1
    Technique(M, "Sparse attention-output gate", _on("model.attn_gate"),
              _k("model", "attn_gate", "attn_gate_scale", "gate_window"), RECORD),
    # record-model-training.md §3.3, other-seeds.md §1 "SmearGate (BOS-fixed)"
    Technique(M, "SmearGate, BOS-masked", _both(_on("model.smear_gate"), _is("model.smear_gate_kind", "bos_masked")),
              _k("model", "smear_gate", "smear_gate_kind"), RECORD),
    # params.yaml smear_gate_kind ("static (#374: ...)"), other-seeds.md §3.2
    Technique(M, "SmearGate, static", _both(_on("model.smear_gate"), _is("model.smear_gate_kind", "static")),
              _k("model", "smear_gate", "smear_gate_kind"), "#374"),
    # params.yaml bigram_hash ("#374: 2048 buckets"), seeds/pr374.txt "BigramHash"
    Technique(M, "BigramHash embedding", _on("model.bigram_hash.buckets"), _k("model.bigram_hash", "buckets", "dim"),
              "#374"),
    # params.yaml value_embed ("#374: dim 128, layers [9, 10]"), seeds/pr374.txt title "Shared VE128"
    Technique(M, "Shared value embeddings", _on("model.value_embed.layers"), _k("model.value_embed", "layers", "dim"),
              "#374"),
    # params.yaml ortho_init ("#374's OrthoInit rule")
    Technique(M, "OrthoInit", _on("model.ortho_init"), ("model.ortho_init",), "#374"),
    # other-seeds.md §4 (#1802: "Polar Express NS"), record-model-training.md §0 ("5 Polar-Express Newton–Schulz")
    Technique(T, "Muon, Polar-Express Newton–Schulz", _is(f"{MUON}.ns_coeffs", "polar_express"),
              _k(MUON, "ns_coeffs", "ns_steps", "weight_decay"), "#1802, " + RECORD),
    # other-seeds.md §7 "Muon NS coefficients": classic fixed in #374, #1492, #2143
    Technique(T, "Muon, classic Newton–Schulz", _is(f"{MUON}.ns_coeffs", "classic"),
              _k(MUON, "ns_coeffs", "ns_steps", "weight_decay"), "#374"),
    # other-seeds.md §7 "Muon row-normalisation (MuonEq-R)": yes in #1492 and #1855, no in #374
    Technique(T, "Muon row normalization", _on(f"{MUON}.row_normalize"), _k(MUON, "row_normalize"), "#1492, " + RECORD),
    # other-seeds.md §7 "Weight averaging": EMA 0.9965 in #1492 and #1855
    Technique(T, "EMA weights", _is(f"{AVG}.kind", "ema"), _k(AVG, "kind", "ema_decay"), "#1492, " + RECORD),
    # seeds/pr374.txt title ("Tight SWA"), other-seeds.md §7 "Weight averaging"
    Technique(T, "Tight SWA", _is(f"{AVG}.kind", "swa"), _k(AVG, "kind", "swa_every", "swa_start_below_lr"), "#374"),
    # other-seeds.md §7 "LR warmdown" (#374: wallclock warm-down; #1855: last 85%), record-model-training.md §1c
    Technique(T, "LR warmdown", _on("train.warmdown_frac"), _k("train", "warmdown_frac", "min_lr"), "#374, " + RECORD),
    # params.yaml seq_schedule / seq_warmup_steps (#2014), frontier.md §3.7
    Technique(T, "Progressive sequence length", _on("train.seq_schedule"),
              _k("train", "seq_schedule", "seq_warmup_steps"), "#2014"),
    # params.yaml qat ("#374: enabled, 0.1, 6"), other-seeds.md §3.2 (likely inert there)
    Technique(T, "Late QAT", _on("train.qat.enabled"), _k("train.qat", "start_below_lr", "bits"), "#374"),
    # other-seeds.md §7 "Matrix quantization" (GPTQ int6 in #1492), record-quant-compress.md §1, §5
    Technique(Q, "GPTQ with SDClip", _is("quantize.method", "gptq"), _bits, "#1492, " + RECORD),
    # params.yaml quantize.method ("rtn (row-max round-to-nearest, the #374 baseline)")
    Technique(Q, "Round-to-nearest quantization", _is("quantize.method", "rtn"), _bits, "#374"),
    # other-seeds.md §5.2 "Mixed int5/int6/int7 bit allocation" (#2143); make_presets.py PR2143
    Technique(Q, "int5 matrices", lambda p: any(_low(p, kind) for kind in QUANT_KINDS[1:]), _int5, "#2143"),
    # params.yaml hadamard ("(#2143)"), other-seeds.md §5.2 "Hadamard rotation before GPTQ"
    Technique(Q, "Hadamard rotation", _on("quantize.hadamard"), ("quantize.hadamard",), "#2143"),
    # params.yaml awq ("AWQ-lite, #1908"), frontier.md §3.1
    Technique(Q, "AWQ-lite", _on("quantize.awq.enabled"), _k("quantize.awq", "bits", "top_k", "group_size"), "#1908"),
    # params.yaml inverse ("reverse_cholesky ... (#2054)"), frontier.md §3.13
    Technique(Q, "Reverse-Cholesky inverse", _is("quantize.inverse", "reverse_cholesky"), ("quantize.inverse",),
              "#2054"),
    # record-quant-compress.md §1 (GATED_ATTN_QUANT_GATE=1), §6
    Technique(Q, "int8 attention gates", _both(_on("model.attn_gate"), _on("quantize.gate_int8")),
              ("quantize.gate_int8",), RECORD),
    # record-quant-compress.md §7, seeds/pr1855.txt ("LQER asymmetric int4 rank-4")
    Technique(Q, "LQER", _on("quantize.lqer.enabled"), _k("quantize.lqer", "rank", "top_k", "mode", "group"), RECORD),
    # record-quant-compress.md §12 item 1: the record added the per-group pipeline (lrzip, simsort) to its parent
    Technique(C, "Per-role streams", _is("compress.grouping", "role"),
              _k("compress", "grouping", "codec", "rest_codec"), "#1855"),
    Technique(C, "lrzip ZPAQ", _is("compress.codec", "lrzip"), _k("compress.lrzip", "level", "zpaq"), "#1855"),
    Technique(C, "Similarity row sort", _both(_on("compress.simsort"), lambda p: get(p, "compress.codec") != "ans"),
              ("compress.simsort",), "#1855"),
    # other-seeds.md §7 "Model compressor": byte-shuffle + brotli-11 in #1492, zstd-22 in #374
    Technique(C, "brotli integer stream", _is("compress.codec", "brotli"), _k("compress.brotli", "quality", "lgwin"),
              "#1492"),
    Technique(C, "zstd integer stream", _is("compress.codec", "zstd"), ("compress.zstd.level",), "#374"),
    # params.yaml compress.codec ("ans (range coder at the entropy bound)"): this repository's; no note names a PR
    Technique(C, "Range coder (ANS)", _is("compress.codec", "ans"), ("compress.ans.context",), NONE),
    # other-seeds.md §7 (byte-shuffle in #1492); params.yaml rest_shuffle ("#1851's BSHF")
    Technique(C, "Byte shuffle", _on("compress.rest_shuffle"), ("compress.rest_shuffle",), "#1492, #1851"),
    # record-quant-compress.md §12 item 3: the record moved the code wrapper to pyminify + brotli
    Technique(C, "Code: brotli bundle", _is("bundle.codec", "brotli"), _k("bundle", "codec", "minify"), "#1855"),
    # params.yaml bundle.codec ("#1492: lzma"), record-quant-compress.md §13.4
    Technique(C, "Code: lzma bundle", _is("bundle.codec", "lzma"), _k("bundle", "codec", "minify"), "#1492"),
    # other-seeds.md §7 "Sliding-window eval" (#374 final score, #1492); params.yaml sliding ("#1492: 2048, 64, 32")
    Technique(E, "Sliding-window eval", _on("eval.sliding.enabled"), _k("eval.sliding", "seq_len", "stride"),
              "#374, #1492"),
    # params.yaml chunk_sgd ("#1492: ..."), other-seeds.md §7 "TTT type" (score-first full-parameter SGD)
    Technique(E, "Chunk SGD TTT", _on("eval.chunk_sgd.enabled"), _k("eval.chunk_sgd", "chunk_tokens", "epochs", "lr"),
              "#1492"),
    # params.yaml multi_phase ("#1802 (compliant: false)"), other-seeds.md §4
    Technique(E, "Multi-phase global TTT", _on("eval.multi_phase.enabled"), _k("eval.multi_phase", "passes", "lr"),
              "#1802"),
    # record-eval-data.md §0, A6 (phased score-first LoRA TTT: the reported score)
    Technique(E, "Phased LoRA TTT", _on(f"{LORA}.enabled"), _k(LORA, "rank", "chunk_size", "context", "phases"),
              RECORD),
    # frontier.md §3.9 "Single global-TTT phase (#2014, ..., #2130/#2135)"
    Technique(E, "One global-TTT phase", _ttt(lambda p: len(get(p, f"{LORA}.phases")) == 1), _k(LORA, "phases"),
              "#2014, #2135"),
    # frontier.md §3.4 ("#2130/#2135 'K off'"), make_presets.py PR2135 (TTT_K_LORA=0)
    Technique(E, "TTT without K LoRA", _ttt(lambda p: "k" not in get(p, f"{LORA}.sites")), _k(LORA, "sites"),
              "#2130, #2135"),
    # frontier.md §3.3 (#1953: 2560; #2014: 3072)
    Technique(E, "Longer eval context", _long_context, ("score.seq_len", f"{LORA}.context", "train.seq_len"),
              "#1953, #2014"),
    # params.yaml local_lr_mult ("#1953/#2014: 0.75, #2060: 0.80"), frontier.md §3.5
    Technique(E, "TTT per-document LR multiplier", _ttt(lambda p: get(p, f"{LORA}.local_lr_mult") != 1.0),
              _k(LORA, "local_lr_mult"), "#1953, #2060"),
    # params.yaml short_chunks ("#2014: 256:8, 2000:24"), frontier.md §3.8
    Technique(E, "Short-document chunks", _ttt(f"{LORA}.short_chunks"), _k(LORA, "short_chunks"), "#2014"),
    # params.yaml asym_logit ("#1923/#2014/#2135: true"), frontier.md §3.2 ("#1923 jorge-asenjo")
    Technique(E, "AsymLogit rescale", _ttt(f"{LORA}.asym_logit"), _k(LORA, "asym_logit"), "#1923"),
    # params.yaml ngram_tilt ("#2135: on"), make_presets.py (#2130's stack), frontier.md §3.11
    Technique(E, "Token-only n-gram tilt", _ttt(f"{TILT}.enabled"), _k(TILT, "order", "threshold", "boost"),
              "#2130, #2135"),
)  # fmt: skip


def _holds(predicate: Predicate, params: dict) -> bool:
    try:
        return predicate(params)
    except KeyError:
        return False


def techniques_on(params: dict) -> list[Technique]:
    """The techniques these params turn on, in pipeline order (model, train, quantize, compress, eval); a knob the
    params do not have (a run of an older pgolf) is off."""
    on = [t for t in TECHNIQUES if _holds(t.on, params)]
    return sorted(on, key=lambda t: STAGES.index(t.stage))


def technique_table(params: dict) -> str:
    """The markdown table (``| Technique | Setting | From |``) of the techniques on in ``params`` (a params.yaml
    dict), one row each in pipeline order, with the PRs the repository's notes name for each (module docstring)."""
    return "\n".join([HEADER, *(t.row(params) for t in techniques_on(params))]) + "\n"
