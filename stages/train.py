"""Stage train: the record's training run (wall-clock budget, Muon + AdamW, recurrence, EMA/SWA) ->
artifacts/train/{raw,<averaging>}.safetensors + meta.json; dvclive curves in metrics/train/.

Launched plainly (``python -m stages.train``) or with ``torchrun ... -m stages.train`` (``train.launcher``). A
killed run resumes from artifacts/.resume/train (written every ``train.checkpoint_seconds``).
"""

import argparse
import json
from pathlib import Path

from pgolf import dist
from pgolf.cli import run
from pgolf.config import load_section
from pgolf.eval.score import ScoreConfig
from pgolf.model.config import ModelParams
from pgolf.train.config import TrainConfig
from pgolf.train.stage import TrainPaths, run_train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--shards", default="data/shards")
    parser.add_argument("--tokenizer", default="artifacts/tokenizer")
    parser.add_argument("--out", default="artifacts/train")
    parser.add_argument("--resume", default="artifacts/.resume/train")
    parser.add_argument("--live", default="metrics/train")
    parser.add_argument("--metrics", default="metrics/train.json")
    args = parser.parse_args()

    model_params = load_section("model", ModelParams, args.params)
    cfg = load_section("train", TrainConfig, args.params)
    score = load_section("score", ScoreConfig, args.params)
    paths = TrainPaths(*(Path(p) for p in (args.shards, args.tokenizer, args.out, args.resume, args.live)))
    summary = run_train(model_params, cfg, score, paths)
    if dist.dist_info().is_main:
        Path(args.metrics).parent.mkdir(parents=True, exist_ok=True)
        Path(args.metrics).write_text(json.dumps(summary, indent=2) + "\n")
    dist.print0(
        f"train: {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['train_seconds']:.1f}s "
        f"(+{summary['warmup_seconds']:.1f}s warm-up), final loss {summary['final_train_loss']:.4f}, "
        f"val_bpb {summary['final_val']['val_bpb']:.4f} -> {args.out}"
    )


if __name__ == "__main__":
    run(main)
