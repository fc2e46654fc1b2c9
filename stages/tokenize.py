"""Stage tokenize: documents -> train/val token shards in the challenge format, the val byte sidecar, the val
document hashes and manifest.json (the sha256 of every shard, the check that no training document is a validation
document) -> data/shards/.

For ``fineweb_cached`` the published shards are adopted (linked and checked) instead of encoded.
"""

import os
import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.data import docs, fingerprint, provenance
from pgolf.data import tokenizer as tok
from pgolf.data.sources import DataConfig, adopt_cached
from pgolf.files import fresh_dir
from pgolf.params import load_section


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    docs: Path = Path("data/docs")
    tokenizer: Path = Path("artifacts/tokenizer")
    out: Path = Path("data/shards")


def tokenize(cfg: DataConfig, paths: Paths) -> dict:
    """Write the shards, the val byte sidecar and the val document hashes into ``paths.out``; write and return
    its manifest."""
    meta = tok.read_meta(paths.tokenizer)
    source = docs.read_manifest(paths.docs)
    out = fresh_dir(paths.out)
    if source["source"] == "fineweb_cached":
        splits = adopt_cached(paths.docs, meta, out)
    else:
        from pgolf.data import encode  # encoding documents is data preparation: not in the submission program

        workers = max(1, os.cpu_count() or 1)
        splits = {s: encode.encode_split(s, paths.docs, paths.tokenizer, out, cfg.shard_tokens, workers)
                  for s in ("val", "train")}  # fmt: skip
        expected = source["splits"]["val"]["text_bytes"]
        if splits["val"]["sidecar_bytes"] != expected:
            raise AssertionError(f"val sidecar sums to {splits['val']['sidecar_bytes']} bytes, docs hold {expected}")
        if splits["val"].get("roundtrip_failures"):
            raise AssertionError(f"{splits['val']['roundtrip_failures']} val documents do not decode to themselves")
    val_hashes = provenance.write_val_hashes(out, meta["bos_id"])
    if "docs" in splits["val"] and val_hashes["documents"] != splits["val"]["docs"]:
        raise AssertionError(f"{val_hashes['documents']} val documents hashed, {splits['val']['docs']} encoded")
    manifest = {
        "source": source["source"],
        "vocab_size": meta["vocab_size"],
        "bos_id": meta["bos_id"],
        "caseops": meta["caseops"],
        "byte_count": "sidecar" if "sidecar_bytes" in splits["val"] else "tokenizer_luts",
        "tokenizer_sha256": meta["model_sha256"],
        "splits": splits,
        "val_hashes": val_hashes,
        "sha256": {path.name: docs.sha256_file(path) for path in sorted(out.glob("*.bin"))},
    }
    manifest["provenance"] = provenance.check_once(out, meta["bos_id"], val_hashes, progress=True)
    manifest["fingerprint"] = fingerprint.fingerprint(out)
    if (check := fingerprint.published_check(manifest["fingerprint"], source.get("variant", ""))) is not None:
        manifest["fingerprint"]["published"] = check
    docs.write_manifest(out, manifest)
    return manifest


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg = load_section("data", paths.params)
    start = time.perf_counter()
    manifest = tokenize(cfg, paths)
    splits = {name: split["tokens"] for name, split in manifest["splits"].items()}
    print(f"tokenize: {splits} tokens, bytes by {manifest['byte_count']} -> {paths.out} "
          f"in {time.perf_counter() - start:.1f}s")  # fmt: skip
    print(fingerprint_line(manifest["fingerprint"]))


def fingerprint_line(found: dict) -> str:
    """The fingerprint as the records' logs print it, and any published figure it differs from."""
    line = (f"tokenize: train_shards: {found['train_shards']} val_tokens: {found['val_targets']} "
            f"(val stream sha256 {found['val_sha256'][:12]})")  # fmt: skip
    check = found.get("published")
    if check and not check["matches"]:
        differ = ", ".join(f"{k} {found[k]:,} (published {check['published'][k]:,})" for k in check["differs"])
        line += f"\nwarning: data.variant={check['variant']} differs from the published shards: {differ}"
    return line


if __name__ == "__main__":
    run(main)
