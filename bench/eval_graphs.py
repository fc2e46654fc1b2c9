"""Graphs ``torch.compile`` builds for a whole evaluation (plain, sliding, LoRA TTT, chunk SGD, in the evaluate
stage's order, in one process as the stage runs them), on CPU with the ``aot_eager`` backend: the count of graphs is
the same as with inductor on CUDA (each graph is one compile; on an H100 the record's forward_ttt took 84-138 s),
only their build is cheap here. The model is the toy one of the tests; the shapes are what matters: documents of 3
to 2,047 tokens, windows and TTT contexts up to 2,048 tokens (the record's), LoRA chunks of 24, LoRA batches of 3
and 2 documents.

    python bench/eval_graphs.py                     # this checkout
    python bench/eval_graphs.py --root ../old       # another checkout (94b81af or later), for a before/after

Each mode reports the graphs its warm-up built, those built while scoring (the timed part: expected 0), and the
warm-up seconds.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

LENGTHS = [2047, 1500, 1100, 900, 700, 520, 400, 333, 260, 200, 150, 120, 100, 80, 60, 45, 30, 17, 9, 3]
WIDTH = 2048
MODES = ("plain", "sliding", "lora_ttt", "chunk_sgd")


def _helpers(root: Path):
    """(run, text_val, texts_of, tiny_model, wide_cfg, split_documents) of the checkout at ``root``."""
    sys.path[:0] = [str(root), str(root / "tests")]
    if (root / "pgolf" / "score").is_dir():  # after the renovation (3fd0b33 and later)
        test = importlib.import_module("tests.score.test_compile")
        helpers = importlib.import_module("tests.helpers.eval")
        documents = importlib.import_module("pgolf.score.documents")
        return test.run, helpers.text_val, helpers.texts_of, helpers.tiny_model, helpers.wide_cfg, documents
    test = importlib.import_module("test_eval_compile")  # 94b81af: a flat tests/ folder
    modes = importlib.import_module("test_eval_modes")
    documents = importlib.import_module("pgolf.eval.documents")
    return test.run, modes.text_val, test.texts_of, modes.tiny_model, test.wide_cfg, documents


def measure(root: Path) -> dict:
    run, text_val, texts_of, tiny_model, wide_cfg, documents = _helpers(root)
    from torch._dynamo.utils import counters

    torch.set_num_threads(1)
    val = text_val(texts_of(LENGTHS, seed=3))
    docs, cfg = documents.split_documents(val.tokens, 1), wide_cfg(WIDTH)
    out = {}
    for name in MODES:
        before, start = counters["stats"]["unique_graphs"], time.perf_counter()
        result = run(name, tiny_model(), val, docs, cfg, "aot_eager")
        stats = result.compile
        out[name] = {"graphs": counters["stats"]["unique_graphs"] - before, "graphs_warmup": stats["graphs_warmup"],
                     "graphs_scoring": stats["graphs_scoring"], "warmup_seconds": stats["warmup_seconds"],
                     "seconds": round(time.perf_counter() - start, 1), "val_bpb": result.totals.val_bpb}  # fmt: skip
        print(f"{root.name} {name}: {out[name]}", flush=True)
    out["total_graphs"] = sum(m["graphs"] for m in out.values() if isinstance(m, dict))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="a pgolf checkout")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    result = measure(Path(args.root).resolve())
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
