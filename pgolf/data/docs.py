"""Documents as the prepare stage writes them: ``train.jsonl`` / ``val.jsonl`` plus ``manifest.json``.

Each line is ``{"id": ..., "text": ...}``. The manifest records the source, the verified source files and, for
each output, its document count, UTF-8 bytes and sha256, so later stages and tests can check what they read.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pgolf.errors import PgolfError
from pgolf.files import write_json

MANIFEST = "manifest.json"
SPLITS = ("train", "val")


@dataclass(frozen=True)
class Doc:
    id: str
    text: str


def split_of(key: str, val_fraction: float) -> str:
    """``"val"`` for a fixed ~``val_fraction`` of keys, chosen by hash: independent of order and of the other keys."""
    digest = hashlib.sha256(f"pgolf-split:{key}".encode()).digest()
    return "val" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


WHITESPACE_MARKER = "\u2581"
"""SentencePiece's space symbol: in a text it decodes to a space, so a document holding it is not tokenized
losslessly (rejected in the validation split, whose bytes the audit counts exactly)."""


def write_docs(directory: Path, split: str, docs: Iterable[Doc]) -> dict:
    """Write one split as JSONL; return its summary for the manifest. A validation document holding the
    tokenizer's whitespace marker is refused, naming it (:data:`WHITESPACE_MARKER`)."""
    path = directory / f"{split}.jsonl"
    count = nbytes = 0
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for doc in docs:
            if split == "val" and WHITESPACE_MARKER in doc.text:
                at = doc.text.index(WHITESPACE_MARKER)
                raise PgolfError(
                    f"{path}: validation document {doc.id!r} holds U+2581 (the tokenizer's whitespace marker) at "
                    f"character {at}: SentencePiece decodes it as a space, so its bytes could not be counted exactly; "
                    "remove the character from the source document or hold the document out of validation"
                )
            f.write(json.dumps({"id": doc.id, "text": doc.text}, ensure_ascii=False) + "\n")
            count += 1
            nbytes += len(doc.text.encode("utf-8"))
    return {"file": path.name, "docs": count, "text_bytes": nbytes, "sha256": sha256_file(path)}


def write_manifest(directory: Path, manifest: dict) -> None:
    """A data folder's ``manifest.json`` (documents or shards): sorted keys, UTF-8 text."""
    write_json(directory / MANIFEST, manifest, sort_keys=True, ensure_ascii=False)


def read_manifest(directory: Path | str) -> dict:
    path = Path(directory) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: documents manifest missing; run `dvc repro prepare`")
    return json.loads(path.read_text(encoding="utf-8"))


def read_docs(directory: Path | str, split: str) -> Iterator[Doc]:
    """Stream one split; a malformed line raises naming the file and line number."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(directory) / f"{split}.jsonl"
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                yield Doc(id=str(record["id"]), text=record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise ValueError(f"{path}:{number}: malformed document line ({err})") from err
