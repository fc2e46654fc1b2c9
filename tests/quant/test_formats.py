"""pgolf.quant.formats: every format round-trips exactly (safetensors + JSON, torch.save, model.bin with
AWQ-lite groups), dequantizes to its dtype and shape, and is validated."""

from __future__ import annotations

import io
import json

import pytest
import torch
from safetensors.torch import load, save

from pgolf.compress import pergroup, submission
from pgolf.config import parse_section, read_params
from pgolf.quant import formats, gptq, lqer
from pgolf.quant.formats import (
    Entry,
    GateInt8Row,
    LowRankCorrection,
    Passthrough,
    QuantizedMatrix,
    dequantize,
    from_tensors,
    to_tensors,
)
from pgolf.quant.gptq import quantize_gate_int8_row, relative_error, rtn_quantize, sdclip_scales
from tests.helpers.quant import gen, quantized_matrix


def _embedding() -> torch.Tensor:
    return torch.randn(32, 16, generator=gen(13)).to(torch.bfloat16)


def _all_entries() -> list[Entry]:
    w, fmt = quantized_matrix(bits=7, rows=16, cols=64)
    corr = lqer.pack_asym(*lqer.low_rank_residual(lqer.quantization_residual(w, fmt), 2), 32)
    emb = _embedding()
    s = sdclip_scales(emb, 14.0, 7)
    emb_fmt = QuantizedMatrix(q=rtn_quantize(emb, s, 7), scale=s, bits=7, rotated=False)
    ctrl = torch.randn(3, 4, generator=gen(14))
    return [
        Entry("blocks.0.mlp.fc.weight", (16, 64), "float32", fmt, corr),
        Entry("blocks.0.attn.c_q.weight", (16, 64), "float32", fmt, lqer.pack_sym(*lqer.low_rank_residual(w, 3), 4)),
        Entry("tok_emb.weight", (32, 16), "bfloat16", emb_fmt, None),
        Entry("blocks.0.attn_gate_w", (8, 12), "float32", quantize_gate_int8_row(torch.randn(8, 12)), None),
        Entry("resid_mix", (3, 4), "float32", Passthrough(ctrl.half(), "float32"), None),
        Entry("smear_lambda", (), "float32", Passthrough(torch.tensor(0.25), "float32"), None),
    ]


def test_formats_round_trip_exact_through_safetensors_and_json() -> None:
    entries = _all_entries()
    tensors, manifest = to_tensors(entries)
    assert "tok_emb.weight.q" in tensors and "blocks.0.mlp.fc.weight.lqer.b_scale" in tensors
    # Fresh tensors that own their storage: torch.save (and safetensors) write exactly these bytes, nothing shared.
    assert len({t.untyped_storage().data_ptr() for t in tensors.values()}) == len(tensors)
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors.values())
    back = from_tensors(load(save(tensors)), json.loads(json.dumps(manifest)))
    assert [e.name for e in back] == [e.name for e in entries]
    for orig, new in zip(entries, back, strict=True):
        assert (new.shape, new.dtype, type(new.fmt)) == (orig.shape, orig.dtype, type(orig.fmt))
        assert torch.equal(dequantize(new), dequantize(orig))
        assert dequantize(new).dtype == getattr(torch, orig.dtype) and dequantize(new).shape == orig.shape
    assert back[0].fmt.bits == 7 and back[0].fmt.rotated is False and back[0].lqer.group == 32
    buf = io.BytesIO()
    torch.save(tensors, buf)  # the dict is also plain torch.save-able, and loads back without pickled code
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    assert list(loaded) == list(tensors)
    assert all(loaded[k].dtype == t.dtype and torch.equal(loaded[k], t) for k, t in tensors.items())
    for orig, new in zip(entries, from_tensors(loaded, manifest), strict=True):
        assert torch.equal(dequantize(new), dequantize(orig))


def test_dequantize_restores_dtype_and_shape() -> None:
    out = dequantize(_all_entries()[2])
    assert out.dtype == torch.bfloat16 and out.shape == (32, 16)
    assert relative_error(_embedding().float() - out.float(), _embedding()) < 0.1
    gate = dequantize(_all_entries()[3])
    assert gate.dtype == torch.float32 and gate.shape == (8, 12)
    scalar = dequantize(_all_entries()[5])
    assert scalar.shape == () and scalar.item() == 0.25


def test_manifest_errors() -> None:
    tensors, manifest = to_tensors(_all_entries())
    manifest["entries"][3]["format"]["kind"] = "gate_int4_col"
    with pytest.raises(ValueError, match="unknown quantized format kind 'gate_int4_col'"):
        from_tensors(tensors, manifest)
    _, manifest = to_tensors(_all_entries())
    del tensors["resid_mix.value"]
    with pytest.raises(ValueError, match="resid_mix"):
        from_tensors(tensors, manifest)
    with pytest.raises(ValueError, match="version"):
        from_tensors(tensors, {"version": 99, "entries": []})
    with pytest.raises(ValueError, match="duplicate"):
        to_tensors(_all_entries()[:1] * 2)


def test_format_validation() -> None:
    q = torch.zeros(4, 8, dtype=torch.int8)
    with pytest.raises(ValueError, match="scale"):
        QuantizedMatrix(q=q, scale=torch.ones(4), bits=6, rotated=False)
    with pytest.raises(ValueError, match="int8"):
        GateInt8Row(q=q.float(), scale=torch.ones(4, dtype=torch.float16))
    with pytest.raises(ValueError, match="LQER"):
        corr = lqer.pack_sym(torch.ones(2, 1), torch.ones(1, 2), 4)
        Entry("p", (2,), "float32", Passthrough(torch.ones(2), "float32"), corr)
    with pytest.raises(ValueError, match="mode"):
        LowRankCorrection(q[:, :2], torch.ones(4).half(), q[:2], torch.ones(2).half(), mode="bogus", group=0)


def test_protected_groups_round_trip_through_formats_and_model_bin(quantized):
    entries = quantized["entries"]
    tensors, manifest = formats.to_tensors(entries)
    keys = [k for k in tensors if k.endswith(".awq_scale")]
    records = [r for r in manifest["entries"] if "awq" in r["format"]]
    assert keys and len(keys) == len(records) and all(r["format"]["awq"]["bits"] == 8 for r in records)
    back = formats.from_tensors(tensors, manifest)
    for a, b in zip(entries, back, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b)), a.name
    compress = read_params("params.yaml")["compress"]
    cfg = parse_section({**compress, "codec": "brotli", "rest_codec": "brotli"}, "compress", pergroup.CompressConfig)
    meta = {"model_config": {}, "train": {"looping_from_step": 10}, "formats": manifest}
    blob, _ = submission.pack_model(entries, meta, cfg, workers=1)
    restored, _ = submission.unpack_model(blob, workers=1)
    for a, b in zip(entries, restored, strict=True):
        assert torch.equal(formats.dequantize(a), formats.dequantize(b)), a.name
    assert formats.to_tensors(restored)[1] == manifest


def test_a_matrix_without_groups_keeps_the_old_manifest():
    w = torch.randn(8, 64, generator=gen(7))
    s = gptq.sdclip_scales(w, 11.5, 6)
    fmt = formats.QuantizedMatrix(q=gptq.rtn_quantize(w, s, 6), scale=s, bits=6, rotated=False)
    tensors, manifest = formats.to_tensors([formats.Entry("m", (8, 64), "float32", fmt, None)])
    assert list(tensors) == ["m.q", "m.scale"]
    assert manifest["entries"][0]["format"] == {"kind": "matrix", "bits": 6, "rotated": False}


def test_protected_groups_are_validated():
    q = torch.zeros(4, 128, dtype=torch.int8)
    s = torch.ones(4, dtype=torch.float16)
    with pytest.raises(ValueError, match="overlap"):
        formats.ProtectedGroups((0, 32), 64, s, 8)
    with pytest.raises(ValueError, match="passes the end"):
        formats.QuantizedMatrix(q=q, scale=s, bits=6, rotated=False, protected=formats.ProtectedGroups((96,), 64, s, 8))
    with pytest.raises(ValueError, match="not finer"):
        formats.QuantizedMatrix(q=q, scale=s, bits=8, rotated=False, protected=formats.ProtectedGroups((0,), 64, s, 8))
