"""The counted artifact: model.bin restores the quantize stage's model exactly, rejects corruption, the code bundle
rebuilds a working package in an empty directory, and the size stage enforces the limit."""

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import model_cfg

from pgolf import tensorio
from pgolf.compress import container, submission
from pgolf.compress.bundle import BUNDLE_FILE, BundleConfig, build, bundle_files
from pgolf.compress.pergroup import CompressConfig
from pgolf.compress.submission import check_identical
from pgolf.config import parse_section, read_params
from pgolf.model.gpt import GPT
from pgolf.quant import formats
from pgolf.quant.formats import load_quantized
from pgolf.quant.policy import QuantizeConfig, decide
from pgolf.quant.quantize import quantize_state
from stages import bundle as bundle_stage
from stages import compress as compress_stage

for _package in ("constriction", "zstandard", "python_minifier"):  # the ans and zstd codecs, minify
    pytest.importorskip(_package)

ROOT = Path(__file__).resolve().parents[1]


def _cfg(**overrides) -> CompressConfig:
    return parse_section({**read_params(ROOT / "params.yaml")["compress"], **overrides}, "compress", CompressConfig)


def write_submission(quant: Path, out: Path, **overrides) -> dict:
    """compress then bundle, as DVC runs them: model.bin and the code file in ``out``; the compress metrics."""
    metrics = compress_stage.compress(
        _cfg(**overrides), compress_stage.Paths(quant=quant, out=out, metrics=out.parent / "compress.json")
    )
    bundle_cfg = parse_section(read_params(ROOT / "params.yaml")["bundle"], "bundle", BundleConfig)
    bundle_stage.bundle(bundle_cfg, bundle_stage.Paths(out=out / BUNDLE_FILE), ROOT)
    return metrics


def write_quant_dir(out: Path, **model_overrides) -> Path:
    """A quantize-stage output of a small perturbed model: GPTQ with Hessians, int8 gates, passthrough, LQER."""
    torch.manual_seed(0)
    model = GPT(model_cfg(**model_overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    qcfg = parse_section(read_params(ROOT / "params.yaml")["quantize"], "quantize", QuantizeConfig)
    decisions = decide(model, qcfg)
    state = {k: v.detach() for k, v in model.state_dict().items()}
    hessians = {}
    for name, d in decisions.items():
        if d.spec is not None:
            x = torch.randn(4 * state[name].shape[1], state[name].shape[1])
            hessians[name] = x.T @ x
    entries, _, chosen = quantize_state(state, hessians, decisions, qcfg)
    assert chosen, "the fixture should exercise LQER"
    out.mkdir(parents=True, exist_ok=True)
    tensors, manifest = formats.to_tensors(entries)
    tensorio.save_tensors(out / "quantized.safetensors", tensors, {})
    meta = {"formats": manifest, "model_config": model.cfg.model_dump(mode="json"), "train": {"looping_from_step": 3}}
    (out / "manifest.json").write_text(json.dumps(meta))
    return out


@pytest.fixture(scope="module")
def quant_dir(tmp_path_factory) -> Path:
    return write_quant_dir(tmp_path_factory.mktemp("quant"))


@pytest.fixture(scope="module")
def submission_dir(quant_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("submission")
    metrics = write_submission(quant_dir, out, codec="ans")
    assert metrics["model_bytes"] == (out / "model.bin").stat().st_size and (out / BUNDLE_FILE).stat().st_size
    assert 1.0 <= metrics["integer_ratio_to_bound"] < 1.01
    return out


def test_model_bin_restores_the_quantized_model_exactly(quant_dir, submission_dir):
    entries, meta = load_quantized(quant_dir)
    model, looped = submission.load_model(submission_dir / "model.bin")
    assert looped
    expected = GPT(model.cfg)
    expected.load_state_dict(formats.dequantized_state(entries))
    restored = model.state_dict()
    for name, t in expected.state_dict().items():
        assert restored[name].dtype == t.dtype and torch.equal(restored[name], t), name


@pytest.mark.parametrize("codec", ["ans", "brotli", "lzma", "zstd", "raw", "lrzip"])
def test_every_codec_round_trips_real_quantized_tensors(quant_dir, codec):
    if codec == "lrzip" and shutil.which("lrzip") is None:
        pytest.skip("lrzip binary not installed (apt-get install lrzip)")
    entries, meta = load_quantized(quant_dir)
    blob, _ = submission.pack_model(entries, meta, _cfg(codec=codec))
    restored, _ = submission.unpack_model(blob)
    check_identical(entries, restored)  # raises on any changed bit
    assert submission.pack_model(entries, meta, _cfg(codec=codec))[0] == blob


def test_corrupted_truncated_and_foreign_files_are_rejected(submission_dir):
    blob = (submission_dir / "model.bin").read_bytes()
    for at in (container.HEADER_BYTES + 3, len(blob) // 2, len(blob) - 1):
        flipped = bytearray(blob)
        flipped[at] ^= 0x01
        with pytest.raises(container.ContainerError, match="sha256 mismatch"):
            submission.unpack_model(bytes(flipped))
    with pytest.raises(container.ContainerError, match="truncated"):
        submission.unpack_model(blob[:-10])
    with pytest.raises(container.ContainerError, match="shorter than"):
        submission.unpack_model(blob[:20])
    with pytest.raises(container.ContainerError, match="not a pgolf model"):
        submission.unpack_model(b"PK\x03\x04" + blob[4:])
    wrong_version = bytearray(blob)
    wrong_version[8] = 9
    with pytest.raises(container.ContainerError, match="version 9"):
        submission.unpack_model(bytes(wrong_version))
    other = container.pack({"format": "something.else"}, [("a", b"xyz")])
    with pytest.raises(container.ContainerError, match="not a 'pgolf.model'"):
        submission.unpack_model(other)


def test_container_streams_round_trip_including_empty_ones():
    streams = [("a", b"hello"), ("empty", b""), ("b", bytes(range(256)))]
    manifest, out = container.unpack(container.pack({"k": [1, 2]}, streams))
    assert manifest["k"] == [1, 2] and out == dict(streams)
    assert container.pack({"k": 1}, streams) == container.pack({"k": 1}, streams)


@pytest.mark.parametrize("at", [10, 11])
def test_container_reserved_bytes_must_be_zero(at):
    bad = bytearray(container.pack({"k": 1}, [("a", b"xyz")]))
    bad[at] = 0x01
    with pytest.raises(container.ContainerError, match=r"^m\.bin: reserved header bytes at offset 10-11 are not zero"):
        container.unpack(bytes(bad), "m.bin")


def test_container_checksum_covers_the_header():
    """Moving a byte from the payload length to the manifest length keeps the file size: only the hash sees it."""
    good = container.pack({"k": 1}, [("a", b"xyz")])
    magic, version, reserved, m_len, p_len, digest = struct.unpack_from("<8sHHIQ32s", good)
    shifted = struct.pack("<8sHHIQ32s", magic, version, reserved, m_len + 1, p_len - 1, digest) + good[56:]
    with pytest.raises(container.ContainerError, match="sha256 mismatch"):
        container.unpack(shifted)


def test_container_of_the_previous_version_says_to_recompress():
    old = bytearray(container.pack({"k": 1}, [("a", b"xyz")]))
    old[8:10] = (container.VERSION - 1).to_bytes(2, "little")
    with pytest.raises(container.ContainerError, match=r"container version 1, .*re-run `dvc repro compress`"):
        container.unpack(bytes(old))


_LOGITS = """
import hashlib, sys, torch
import pgolf
from pgolf.compress.submission import load_model
model, looped = load_model(sys.argv[1])
ids = torch.arange(40).remainder(model.cfg.vocab_size).view(2, 20)
with torch.no_grad():
    logits = model(ids, looped=looped)
print(pgolf.__file__)
print(hashlib.sha256(logits.numpy().tobytes()).hexdigest())
"""


def test_bundle_rebuilds_sources_that_score_model_bin_identically(submission_dir, tmp_path):
    work = tmp_path / "empty"
    work.mkdir()
    (work / BUNDLE_FILE).write_bytes((submission_dir / BUNDLE_FILE).read_bytes())
    subprocess.run([sys.executable, BUNDLE_FILE], cwd=work, check=True)
    restored = sorted(str(p.relative_to(work)) for p in work.rglob("*.py") if p.name != BUNDLE_FILE)
    assert restored == bundle_files(ROOT)
    model_bin = str(submission_dir / "model.bin")
    runs = {}
    for where in (work, ROOT):
        out = subprocess.run([sys.executable, "-c", _LOGITS, model_bin], cwd=where, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        runs[where] = out.stdout.split()
    assert runs[work][0].startswith(str(work))  # the bundle's sources ran, not the installed package
    assert runs[work][1] == runs[ROOT][1]


@pytest.mark.parametrize(("codec", "minify"), [("lzma", False), ("lzma", True), ("brotli", False)])
def test_every_bundle_wrapper_restores_the_sources(codec, minify, tmp_path):
    """The #1492 lzma wrapper and the record's brotli one, minified or not: the files come back (verbatim when
    not minified) and still compile."""
    files = ["pgolf/__init__.py", "pgolf/compress/__init__.py", "pgolf/compress/container.py"]
    text = build(ROOT, BundleConfig(codec=codec, minify=minify), files)
    assert text.startswith(f"import {codec} as L,base64 as B\nexec(L.decompress(B.b85decode(")
    (tmp_path / BUNDLE_FILE).write_text(text)
    subprocess.run([sys.executable, BUNDLE_FILE], cwd=tmp_path, check=True)
    for rel in files:
        restored = (tmp_path / rel).read_text()
        compile(restored, rel, "exec")
        assert (restored == (ROOT / rel).read_text()) != minify or rel.endswith("__init__.py")


def _size_stage(tmp_path: Path, submission_dir: Path, limit: int, enforce: bool) -> tuple[int, str, dict]:
    params = read_params(ROOT / "params.yaml")
    params["artifact"] = {"limit_bytes": limit, "enforce": enforce}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    metrics = tmp_path / "size.json"
    cmd = [sys.executable, "-m", "stages.size", "--params", tmp_path / "params.yaml", "--submission",
           submission_dir, "--metrics", metrics]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    return result.returncode, result.stderr, json.loads(metrics.read_text())


def test_size_stage_fails_over_the_limit_after_writing_its_metrics(submission_dir, tmp_path):
    total = sum(p.stat().st_size for p in submission_dir.iterdir())
    code, err, metrics = _size_stage(tmp_path, submission_dir, total - 1, enforce=True)
    assert code == 1 and "1 over the" in err and "largest streams: group:" in err
    assert metrics["total_bytes"] == total and metrics["fits"] is False and metrics["margin_bytes"] == -1
    code, _, metrics = _size_stage(tmp_path, submission_dir, total - 1, enforce=False)
    assert code == 0 and metrics["fits"] is False
    code, _, metrics = _size_stage(tmp_path, submission_dir, total, enforce=True)
    assert code == 0 and metrics["fits"] is True and metrics["margin_bytes"] == 0
    assert metrics["model_bytes"] + metrics["code_bytes"] == total


def test_evaluate_stage_scores_the_counted_artifact_with_passing_audits(built, tmp_path):
    """compress -> evaluate as DVC runs them: every mode scores the same documents, bytes audited against the
    val text, score-first audited for the TTT modes (and failing, flagged non-compliant, for multi-phase)."""
    docs, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    params = read_params(ROOT / "params.yaml")
    small = {"seq_len": 64, "batch_windows": 8}
    params["score"] = {"docs": 4, **small}
    params["eval"].update(progress=False, sliding={"enabled": True, "stride": 16, **small},
                          multi_phase={**params["eval"]["multi_phase"], "enabled": True, "seq_len": 64,
                                       "stride": 16, "chunk_tokens": 512},
                          audit={"score_first": True, "docs": 2})  # fmt: skip
    params["eval"]["lora_ttt"].update(chunk_size=32, context=64, batch_docs=2, phases=[2], rank=4)
    params["eval"]["lora_ttt"]["global_sgd"].update(chunk_tokens=512, seq_len=64)
    params["eval"]["chunk_sgd"].update(chunk_tokens=512, seq_len=64, stride=16)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.evaluate", "--params", tmp_path / "params.yaml", "--submission",
           tmp_path / "submission", "--shards", shards, "--tokenizer", tokenizer, "--docs", docs,
           "--metrics", tmp_path / "eval.json", "--phases", tmp_path / "phases.csv"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    modes = metrics["modes"]
    assert set(modes) == {"plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase"}
    assert metrics["documents"]["count"] == 4 and len(metrics["documents"]["sha256"]) == 64
    assert len({(m["tokens"], m["bytes"]) for m in modes.values()}) == 1
    assert all(m["audit"]["bytes"] is True for m in modes.values())
    assert all(modes[n]["audit"]["score_first"]["passed"] for n in ("lora_ttt", "chunk_sgd"))
    assert not modes["multi_phase"]["audit"]["score_first"]["passed"]
    assert {n: m["compliance"] for n, m in modes.items()} == {"plain": "compliant", "sliding": "compliant",
        "lora_ttt": "compliant", "chunk_sgd": "compliant", "multi_phase": "violated"}  # fmt: skip
    assert [m["compliant"] for m in modes.values()] == [True] * 4 + [False]
    for m in modes.values():  # each part of the evaluation clock once, and their total
        s = m["seconds"]
        assert s["total"] == pytest.approx(s["decompress"] + s["warmup"] + s["scoring"], abs=2e-3)
    assert (tmp_path / "phases.csv").read_text().startswith("mode,segment,documents,val_bpb")


def _eval_paths(tmp_path: Path, shards: Path, tokenizer: Path, docs: Path):
    from stages.evaluate import Paths

    return Paths(submission=tmp_path / "submission", shards=shards, tokenizer=tokenizer, docs=docs,
                 metrics=tmp_path / "eval.json", phases=tmp_path / "phases.csv")  # fmt: skip


def test_model_bin_rung_equals_the_dequantized_rung_and_skipped_audits_are_unaudited(built, tmp_path):
    """The evaluate stage's plain score of model.bin is the quantize stage's dequantized score to the last bit (same
    weights, same scorer, same documents); with the score-first audit off and no val text, nothing is compliant."""
    from pgolf.eval.modes import EvalConfig
    from pgolf.quant.quantize import dequantized_model
    from pgolf.score.bpb import load_val
    from pgolf.score.scorer import ScoreConfig, score_model, scored_documents
    from pgolf.score.scores import EvalContext
    from stages.evaluate import evaluate

    _, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    score = ScoreConfig(docs=3, seq_len=64, batch_windows=8)
    params = read_params(ROOT / "params.yaml")["eval"]
    for mode in ("sliding", "chunk_sgd", "multi_phase"):
        params[mode]["enabled"] = False
    params.update(progress=False, audit={"score_first": False, "docs": 2})
    params["lora_ttt"].update(chunk_size=32, context=64, batch_docs=2, phases=[2], rank=4)
    cfg = parse_section(params, "eval", EvalConfig)
    metrics = evaluate(score, cfg, _eval_paths(tmp_path, shards, tokenizer, tmp_path / "no-docs"))
    entries, manifest = load_quantized(quant)
    model = dequantized_model(entries, manifest["model_config"])
    val = load_val(shards, tokenizer)
    dequantized = score_model(model, val, scored_documents(val, score, meta["bos_id"]), score, EvalContext(True))
    assert metrics["modes"]["plain"]["val_bpb"] == dequantized.totals.val_bpb  # exactly
    assert metrics["modes"]["plain"]["tokens"] == metrics["documents"]["targets"]
    assert {n: m["compliance"] for n, m in metrics["modes"].items()} == {"plain": "unaudited", "lora_ttt": "unaudited"}
    assert metrics["modes"]["lora_ttt"]["audit"] == {"bytes": None, "score_first": None}
    assert not any(m["compliant"] for m in metrics["modes"].values())


def test_a_failed_bytes_audit_fails_the_evaluate_stage_after_writing_its_metrics(built, tmp_path):
    """The val text holds one byte more than the sidecar counts: every mode is `violated`, and the stage exits
    non-zero naming the audit and both files, after metrics/eval.json is written (nothing is lost)."""
    from pgolf.data import docs as doc_io

    docs, tokenizer, shards = built
    meta = json.loads((tokenizer / "meta.json").read_text())
    quant = write_quant_dir(tmp_path / "quant", vocab_size=meta["vocab_size"], bos_id=meta["bos_id"])
    write_submission(quant, tmp_path / "submission", codec="ans")
    altered = tmp_path / "docs"
    shutil.copytree(docs, altered)
    val = list(doc_io.read_docs(altered, "val"))
    doc_io.write_docs(altered, "val", [doc_io.Doc(d.id, d.text + ("!" if i == 0 else "")) for i, d in enumerate(val)])
    params = read_params(ROOT / "params.yaml")
    params["score"] = {"docs": 2, "seq_len": 64, "batch_windows": 8}
    for mode in ("sliding", "lora_ttt", "chunk_sgd", "multi_phase"):
        params["eval"][mode]["enabled"] = False
    params["eval"].update(progress=False)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    cmd = [sys.executable, "-m", "stages.evaluate", "--params", tmp_path / "params.yaml", "--submission",
           tmp_path / "submission", "--shards", shards, "--tokenizer", tokenizer, "--docs", altered,
           "--metrics", tmp_path / "eval.json", "--phases", tmp_path / "phases.csv"]  # fmt: skip
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "plain: the bytes audit failed: scored" in result.stderr and "(-1)" in result.stderr
    assert "val_bytes_*.bin" in result.stderr and "val.jsonl" in result.stderr
    metrics = json.loads((tmp_path / "eval.json").read_text())
    assert (
        metrics["modes"]["plain"]["compliance"] == "violated" and metrics["modes"]["plain"]["audit"]["bytes"] is False
    )
