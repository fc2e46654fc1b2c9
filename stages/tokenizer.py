"""Stage tokenizer: SentencePiece trained on the training documents only (or the published one adopted) ->
artifacts/tokenizer/ (tokenizer.model, meta.json, the byte lookup tables)."""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.data import docs
from pgolf.data import tokenizer as tok
from pgolf.params import load_section


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    docs: Path = Path("data/docs")
    out: Path = Path("artifacts/tokenizer")


def build_tokenizer(cfg: tok.TokenizerConfig, paths: Paths, num_threads: int = 1) -> dict:
    """Train on ``docs/train.jsonl`` only, or adopt the published model of a ``fineweb_cached`` source (checked
    against the ``tokenizer`` section); write it with its meta and byte tables; return the meta."""
    source = docs.read_manifest(paths.docs)
    if source["source"] == "fineweb_cached":
        model = (paths.docs / source["tokenizer"]["file"]).read_bytes()
        tok.check_adopted(model, source, cfg)
        meta = {"origin": f"adopted: {source['repo']} {source['variant']}", "caseops": source["caseops"]}
    else:
        texts = (doc.text for doc in docs.read_docs(paths.docs, "train"))
        from pgolf.data.tokenizer_train import train  # data preparation: not in the submission program

        model = train(texts, cfg, num_threads)
        meta = {"origin": "trained on train.jsonl", "caseops": cfg.caseops, "options": cfg.model_dump()}
    tok.save(paths.out, model, meta)
    return tok.read_meta(paths.out)


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg = load_section("tokenizer", paths.params)
    start = time.perf_counter()
    meta = build_tokenizer(cfg, paths, num_threads=os.cpu_count() or 1)
    print(f"tokenizer: {meta['origin']}, vocab {meta['vocab_size']}, caseops={meta['caseops']} -> {paths.out} "
          f"in {time.perf_counter() - start:.1f}s")  # fmt: skip


if __name__ == "__main__":
    run(main)
