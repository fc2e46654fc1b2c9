"""Writes presets/{pr1492,pr1802,pr2143,pr374}.yaml and presets/cpu/*.yaml from record_1855.yaml plus each seed's
differences (spec other-seeds.md §2-5; the values of their reproduce commands and logs, not script defaults).

    python presets/make_presets.py        # rewrite the generated presets; `git diff presets/` shows the effect

Differences we cannot express are listed in each file's header (e.g. #1492's loader that lets attention cross
documents: ours never does).
"""

from __future__ import annotations

import copy
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def merge(base: dict, change: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in change.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


CLASSIC_MUON = {"ns_coeffs": "classic"}
INT6_ALL = {kind: {"bits": 6, "clip_sigmas": 12.85} for kind in ("q", "k", "v", "o", "up", "down")}
NO_LQER = {"lqer": {"enabled": False}}
SLIDING_64 = {"enabled": True, "seq_len": 2048, "stride": 64, "batch_windows": 32}

PR1492 = {
    "data": {"variant": "sp8192", "train_shards": 128, "hub": {"repo": "kevclark/parameter-golf"}},
    "tokenizer": {"caseops": False},
    "model": {"parallel_mode": "gptj", "parallel_start_layer": 7, "qk_gain_init": 5.25, "smear_gate": False,
              "attn_gate": False},
    "train": {"seed": 42, "max_wallclock_seconds": 588.0, "warmdown_frac": 0.72, "min_lr": 0.0,
              "muon": {"lr": 0.022, "momentum": 0.99, **CLASSIC_MUON}, "adam": {"beta2": 0.95}},
    "calibrate": {"batches": 64},
    "quantize": {"embedding": {"bits": 8, "clip_sigmas": 20.0}, **INT6_ALL, **NO_LQER, "gate_int8": False},
    "compress": {"codec": "brotli", "grouping": "single", "simsort": [], "rest_shuffle": 2,
                 "brotli": {"quality": 11, "lgwin": 22}},
    "bundle": {"codec": "lzma", "minify": True},
    "eval": {"sliding": SLIDING_64, "lora_ttt": {"enabled": False},
             "chunk_sgd": {"enabled": True, "chunk_tokens": 32768, "seq_len": 2048, "stride": 64,
                           "batch_windows": 32, "epochs": 3, "lr": 0.005, "momentum": 0.9, "cosine": True,
                           "grad_clip": 1.0}},
}  # fmt: skip
PR1802 = merge(PR1492, {
    "train": {"max_wallclock_seconds": 596.0, "min_lr": 0.1, "muon": {"ns_coeffs": "polar_express"}},
    "eval": {"chunk_sgd": {"enabled": False},
             "multi_phase": {"enabled": True, "seq_len": 2048, "stride": 64, "batch_windows": 32, "passes": 2,
                             "chunk_tokens": 32768, "lr": 0.015, "momentum": 0.9, "grad_clip": 1.0}},
})  # fmt: skip
PR2143 = {
    "data": {"source": "fineweb", "hub": {"repo": "willdepueoai/parameter-golf"}},
    "tokenizer": {"vocab_size": 12288, "caseops": True},
    "model": {"num_layers": 12, "parallel_mode": "gptj", "parallel_start_layer": 7, "attn_gate_scale": 1.0},
    "train": {"seed": 1337, "max_wallclock_seconds": 596.0,
              "muon": {"lr": 0.026, "momentum": 0.99, **CLASSIC_MUON}, "adam": {"embed_wd": 0.095}},
    "quantize": {"hadamard": True, "gate_int8": False, "embedding": {"bits": 7, "clip_sigmas": 14.0},
                 **{kind: {"bits": 5, "clip_sigmas": 12.85} for kind in ("q", "o", "down")},
                 **{kind: {"bits": 6, "clip_sigmas": 12.85} for kind in ("k", "v", "up")}},
    "compress": {"codec": "brotli", "grouping": "single", "simsort": [], "rest_shuffle": 2},
    "bundle": {"codec": "lzma", "minify": False},
    "eval": {"sliding": SLIDING_64},
}  # fmt: skip
PR374 = {
    "data": {"variant": "sp1024"},
    "tokenizer": {"vocab_size": 1024, "caseops": False},
    "model": {"mlp_mult": 3.0, "mlp_activation": "relu2", "num_loops": 0, "parallel_mode": "none", "xsa_last_n": 4,
              "qk_gain_init": 1.5, "rope_ntk_scale": True, "rope_train_seq_len": 1024, "skip_gates": False,
              "attn_gate": False, "smear_gate": True, "smear_gate_kind": "static", "ortho_init": True,
              "bigram_hash": {"buckets": 2048, "dim": 128, "scale_init": 0.05},
              "value_embed": {"dim": 128, "layers": [9, 10], "scale_init": 0.1}},
    "train": {"seed": 1337, "max_wallclock_seconds": 600.0, "warmdown_frac": 0.43, "min_lr": 0.0,
              "qat": {"enabled": True, "start_below_lr": 0.1, "bits": 6},
              "enable_looping_at": 1.0,
              "muon": {"lr": 0.025, "momentum": 0.99, "row_normalize": False, "weight_decay": 0.04, **CLASSIC_MUON},
              "adam": {"embed_lr": 0.035, "scalar_lr": 0.025, "beta2": 0.95, "embed_wd": 0.04, "scalar_wd": 0.04},
              "averaging": {"kind": "swa", "swa_every": 50, "swa_start_below_lr": 0.2}},
    "export": {"weights": "swa"},
    "quantize": {"method": "rtn", **NO_LQER, "gate_int8": False,
                 "embedding": {"bits": 8, "clip_sigmas": 20.0, "rtn_clip_percentile": 99.99984},
                 **INT6_ALL},
    "compress": {"codec": "zstd", "rest_codec": "zstd", "grouping": "single", "simsort": [], "rest_shuffle": 0},
    "bundle": {"codec": "lzma", "minify": False},
    "eval": {"sliding": SLIDING_64, "lora_ttt": {"enabled": False}},
}  # fmt: skip

SEEDS = {
    "pr1492": (PR1492, "PR #1492/#1493 (val_bpb 1.0810, seeds 42/314/999)", [
        "its loader draws 2048-token windows across documents and attention crosses documents; ours packs documents",
        "and isolates them, in training and in every evaluation mode",
        "its compressor is byte-shuffle + brotli-11 of one torch.save blob; here one integer stream + shuffled rest"]),
    "pr1802": (PR1802, "PR #1802 (val_bpb 1.0771, seeds 42/314/999; its TTT is not score-first: compliant false)",
               [
        "everything said for pr1492.yaml, plus: the reported number is the multi-phase re-score"]),
    "pr2143": (PR2143, "PR #2143 (non-record, val_bpb 1.07134, seed 1337)", [
        "its sp12288 CaseOps tokenizer is trained here by the tokenizer stage on FineWeb docs (the author's is",
        "not published); it trained on fixed windows without document packing; its code was counted raw"]),
    "pr374": (PR374, "PR #374 (val_bpb 1.1246, seed 1337)", [
        "its warm-down is 3000 x (mean step time) of wall clock (~43% of 600 s at 86 ms/step): warmdown_frac 0.43",
        "its loader is a sequential stream without document isolation; its code was counted raw (72,824 B)",
        "its int6 RTN grid is [-32, 31] with s = max(rowmax/31, 1/31); ours is symmetric row-max"]),
}  # fmt: skip


def write(path: Path, params: dict, title: str, notes: list[str]) -> None:
    header = [f"# {title}", "# Generated by presets/make_presets.py from record_1855.yaml + the seed's differences.",
              "# Not expressible here:"] + [f"#   {line}" for line in notes]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(header) + "\n\n" + yaml.safe_dump(params, sort_keys=False, width=110))


def cpu_twin(params: dict) -> dict:
    """The same techniques at the embedded default's sizes (data, widths, budgets and eval scope of params.yaml)."""
    default = yaml.safe_load((ROOT / "params.yaml").read_text())
    twin = copy.deepcopy(params)
    twin["data"] = default["data"]
    twin["tokenizer"] = {**default["tokenizer"], "caseops": params["tokenizer"]["caseops"]}
    model = default["model"]
    twin["model"].update({k: model[k] for k in ("model_dim", "num_heads", "num_kv_heads", "rope_dims",
                                                "rope_train_seq_len", "gate_window")})  # fmt: skip
    twin["model"]["num_layers"] = 6
    for key, small in (("parallel_start_layer", 4), ("loop_start", 2), ("loop_end", 3)):
        twin["model"][key] = min(twin["model"][key], small)
    twin["model"]["xsa_last_n"] = min(twin["model"]["xsa_last_n"], 6)
    for table in ("bigram_hash", "value_embed"):
        twin["model"][table]["dim"] = model[table]["dim"]
    if twin["model"]["value_embed"]["layers"]:
        twin["model"]["value_embed"]["layers"] = [4, 5]  # the last two layers, as #374's [9, 10] of 11
    if twin["model"]["num_loops"]:
        twin["model"]["num_loops"] = 1
    train = default["train"]
    twin["train"].update({k: train[k] for k in ("launcher", "max_wallclock_seconds", "iterations",
                                                "global_batch_tokens", "micro_batch_tokens", "seq_len",
                                                "warmup_steps", "log_every",
                                                "val_every", "checkpoint_seconds",
                                                "dtype_policy")})  # fmt: skip
    twin["train"]["muon"]["momentum_warmup_steps"] = train["muon"]["momentum_warmup_steps"]
    twin["train"]["averaging"]["ema_decay"] = train["averaging"]["ema_decay"]
    twin["train"]["averaging"]["swa_every"] = 10
    twin["score"] = default["score"]
    twin["calibrate"] = default["calibrate"]
    eval_ = default["eval"]
    for mode in ("sliding", "lora_ttt", "chunk_sgd", "multi_phase"):
        twin["eval"][mode] = {**eval_[mode], "enabled": params["eval"][mode]["enabled"]}
    twin["eval"]["compile"] = eval_["compile"]  # eager on the CPU
    return twin


def main() -> None:
    record = yaml.safe_load((HERE / "record_1855.yaml").read_text())
    write(HERE / "cpu" / "record_1855.yaml", cpu_twin(record), "CPU twin of PR #1855 (the record)",
          ["the record's sizes and budgets; see record_1855.yaml"])  # fmt: skip
    for name, (change, title, notes) in SEEDS.items():
        params = merge(record, change)
        write(HERE / f"{name}.yaml", params, title, notes)
        write(HERE / "cpu" / f"{name}.yaml", cpu_twin(params), f"CPU twin of {title}", notes)


if __name__ == "__main__":
    main()
