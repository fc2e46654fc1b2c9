"""pgolf.model.attention: document-isolated attention backends against an exact float64 block-diagonal causal
reference, the varlen call per torch release, flex block masks, and the sdpa_gather custom op."""

import math
import warnings

import numpy as np
import pytest
import torch

from pgolf.model import attention
from pgolf.model.attention import DocAttention, available, backend_fn, select_backend
from pgolf.model.gpt import GPT
from pgolf.model.layers import Attention
from pgolf.train.loader import build_cu_seqlens
from tests.helpers.config import model_cfg

CPU_BACKENDS = [name for name in ("sdpa_gather", "flex") if available(name, "cpu")]


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.fixture(autouse=True)
def _quiet_flex():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
        yield


def reference_attention(q, k, v, cu_seqlens):
    """Full B*T x B*T attention in float64 with a block-diagonal causal mask built from cu_seqlens; positions
    outside every segment give zeros."""
    B, T, H, Dh = q.shape
    n, rep = B * T, H // k.size(2)
    qf, kf, vf = (t.double().reshape(n, t.size(2), Dh).transpose(0, 1).cpu() for t in (q, k, v))  # (heads, n, Dh)
    kf, vf = kf.repeat_interleave(rep, 0), vf.repeat_interleave(rep, 0)
    pos = torch.arange(n)
    if cu_seqlens is None:
        doc, covered = pos // T, torch.ones(n, dtype=torch.bool)
    else:
        cu = cu_seqlens.long().cpu()
        doc, covered = torch.searchsorted(cu, pos, right=True) - 1, (pos >= cu[0]) & (pos < cu[-1])
    allowed = (pos[:, None] >= pos[None, :]) & (doc[:, None] == doc[None, :]) & covered[:, None]
    scores = (qf @ kf.transpose(1, 2)) / math.sqrt(Dh)
    probs = torch.softmax(scores.masked_fill(~allowed, -math.inf), dim=-1).nan_to_num(0.0)
    return (probs @ vf).transpose(0, 1).reshape(B, T, H, Dh)


def random_cu(g: torch.Generator, n: int, pad_multiple: int) -> torch.Tensor:
    """A random segmentation of n positions (many length-1 segments) through the loader's own padding."""
    starts = sorted({0, *torch.randint(1, n, (n // 6,), generator=g).tolist()})
    starts += [s + 1 for s in starts[::3] if s + 1 < n]  # force some length-1 segments
    return build_cu_seqlens(np.array(sorted(set(starts))), n, max_seq_len=0, pad_multiple=pad_multiple)


def qkv(g, B, T, H, G, Dh, dtype=torch.float64, device="cpu"):
    q = torch.randn(B, T, H, Dh, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, T, G, Dh, generator=g, dtype=torch.float64) for _ in range(2))
    return (t.to(device, dtype) for t in (q, k, v))


LAYOUTS = [(1, 96, 4, 2, 16), (1, 61, 8, 8, 8), (2, 50, 6, 2, 8), (1, 130, 8, 4, 32)]  # B, T, H, G, Dh


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_backends_match_the_dense_reference(backend, layout, seed):
    g = torch.Generator().manual_seed(seed)
    B, T, H, G, Dh = layout
    q, k, v = qkv(g, B, T, H, G, Dh)
    cu = random_cu(g, B * T, pad_multiple=16)
    assert (cu[1:] - cu[:-1] == 1).any() and cu[-1] == cu[-2] == B * T  # length-1 segments and a padded tail
    fn = backend_fn(backend)
    torch.testing.assert_close(fn(q, k, v, cu), reference_attention(q, k, v, cu), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(fn(q, k, v, None), reference_attention(q, k, v, None), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_edge_segmentations(backend):
    """One segment, all length-1 segments, and positions outside every segment (zeros)."""
    g = torch.Generator().manual_seed(3)
    q, k, v = qkv(g, 1, 40, 4, 2, 8)
    fn = backend_fn(backend)
    for cu in ([0, 40, 40, 40], list(range(41)), [5, 9, 30, 30]):
        cu = torch.tensor(cu, dtype=torch.int32)
        torch.testing.assert_close(fn(q, k, v, cu), reference_attention(q, k, v, cu), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b != "flex"])  # flex has no CPU backward
def test_gradients_match_the_reference(backend):
    g = torch.Generator().manual_seed(4)
    q, k, v = (t.requires_grad_() for t in qkv(g, 1, 48, 4, 2, 8))
    cu = random_cu(g, 48, pad_multiple=8)
    w = torch.randn(1, 48, 4, 8, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((backend_fn(backend)(q, k, v, cu) * w).sum(), (q, k, v))
    expected = torch.autograd.grad((reference_attention(q, k, v, cu) * w).sum(), (q, k, v))
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_selection_is_by_device_and_availability():
    assert select_backend("cpu") == "sdpa_gather" and select_backend("cpu", "flex") == "flex"
    with pytest.raises(RuntimeError):
        select_backend("cpu", "fa3")
    with pytest.raises(ValueError):
        select_backend("cpu", "nope")
    attend = Attention(model_cfg(), 0).attend
    assert isinstance(attend, DocAttention) and attend.cpu == "sdpa_gather"
    if torch.cuda.is_available():
        assert attend.cuda in ("fa3", "varlen", "flex")
    else:
        assert attend.cuda == "sdpa_gather"


@pytest.mark.skipif(not available("flex", "cpu"), reason="flex_attention unavailable")
@pytest.mark.parametrize("looped", [False, True])
@torch.no_grad()
def test_packed_documents_equal_separate_runs_with_flex(looped):
    """Forward only: flex_attention has no backward on CPU."""
    torch.manual_seed(0)
    model = GPT(model_cfg()).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    for m in model.modules():
        if isinstance(m, Attention):
            m.attend = DocAttention("flex")
    g = torch.Generator().manual_seed(1)
    a, b = torch.randint(2, 64, (9,), generator=g), torch.randint(2, 64, (7,), generator=g)
    a[0] = b[0] = 1
    packed = model(torch.cat([a, b])[None], cu_seqlens=torch.tensor([0, 9, 16, 16], dtype=torch.int32), looped=looped)
    torch.testing.assert_close(packed[0, :9], model(a[None], looped=looped)[0], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(packed[0, 9:], model(b[None], looped=looped)[0], rtol=1e-9, atol=1e-9)


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["sdpa_gather", "flex", "varlen", "fa3"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_cuda_backends_match_the_dense_reference(backend, dtype):
    if not available(backend, "cuda"):
        pytest.skip(f"{backend} unavailable on CUDA")
    g = torch.Generator().manual_seed(5)
    B, T, H, G, Dh = 1, 512, 8, 4, 64
    q, k, v = qkv(g, B, T, H, G, Dh, dtype=dtype, device="cuda")
    cu = random_cu(g, B * T, pad_multiple=64).cuda()
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    for c in (cu, None):
        ref = reference_attention(q, k, v, c).to(dtype)
        torch.testing.assert_close(backend_fn(backend)(q, k, v, c).cpu(), ref, rtol=tol, atol=tol)


def _fake_varlen(signature: str):
    """A CPU stand-in for ``varlen_attn`` with the keyword arguments of one torch release: it checks the causal
    flag and the KV head count it is given, then attends with the float64 reference (flattened rows, B = 1)."""

    def attend(q, k, v, cu_q, cu_k, max_q, max_k, causal, gqa):
        assert causal and torch.equal(cu_q, cu_k) and max_q == max_k >= int((cu_q[1:] - cu_q[:-1]).max())
        assert gqa or k.size(1) == q.size(1), "KV heads must be repeated when enable_gqa is not a parameter"
        calls.append({"kv_heads": k.size(1), "gqa": gqa})
        return reference_attention(q[None], k[None], v[None], cu_q)[0].to(q.dtype)

    def v2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal, False)

    def v2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
              window_size=(-1, -1)):  # fmt: skip
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, tuple(window_size) == (-1, 0), False)

    def v2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
              window_size=(-1, -1), enable_gqa=False, seqused_k=None):  # fmt: skip
        causal = tuple(window_size) == (-1, 0)
        return attend(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, causal, enable_gqa)

    calls: list[dict] = []
    return {"2.10": v2_10, "2.11": v2_11, "2.13": v2_13}[signature], calls


@pytest.mark.parametrize("signature", ["2.10", "2.11", "2.13"])
def test_varlen_call_is_built_from_the_installed_signature(signature):
    """Each torch release's varlen_attn gets the causal flag it knows and, without native GQA, repeated KV heads;
    the result equals the dense reference (run on CPU in bf16 through a fake kernel)."""
    from pgolf.model.attention import make_varlen_attention

    fake, calls = _fake_varlen(signature)
    g = torch.Generator().manual_seed(6)
    q, k, v = qkv(g, 2, 48, 8, 2, 16, dtype=torch.bfloat16)
    cu = random_cu(g, 96, pad_multiple=16)
    y = make_varlen_attention(fake)(q, k, v, cu, 96)
    torch.testing.assert_close(y.double(), reference_attention(q, k, v, cu), rtol=3e-2, atol=3e-2)
    assert calls == [{"kv_heads": 2 if signature == "2.13" else 8, "gqa": signature == "2.13"}]


def test_varlen_with_an_unknown_signature_names_the_alternatives():
    from pgolf.model.attention import make_varlen_attention

    def odd(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, mask=None):
        raise AssertionError("never called")

    with pytest.raises(RuntimeError, match="neither window_size nor is_causal.*sdpa_gather"):
        make_varlen_attention(odd)


@pytest.mark.skipif(not available("flex", "cpu"), reason="flex_attention unavailable")
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_flex_block_mask_has_the_block_structure_of_the_dense_construction(seed):
    """The block mask built from the segments' block ranges equals PyTorch's create_block_mask over the same
    mask_mod (partial and full blocks alike), without evaluating n x n positions."""
    from torch.nn.attention.flex_attention import create_block_mask

    from pgolf.model.attention import _document_ids, document_block_mask

    g = torch.Generator().manual_seed(seed)
    n, block = 512, 16
    cu = random_cu(g, n, pad_multiple=16) if seed else torch.tensor([40, 90, 300, 300, 470, 470], dtype=torch.int32)
    if seed == 2:  # long segments: whole blocks inside one document, which need no mask
        cu = torch.tensor([0, 200, 201, 480, 512], dtype=torch.int32)
    doc = _document_ids(cu.long(), n)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[q_idx] == doc[kv_idx]) & (doc[q_idx] >= 0)

    want = create_block_mask(mask_mod, None, None, n, n, device="cpu", BLOCK_SIZE=block)
    got = document_block_mask(cu, n, block)
    for name in ("kv_num_blocks", "full_kv_num_blocks"):
        assert torch.equal(getattr(got, name), getattr(want, name)), name
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        for row, count in enumerate(getattr(want, num)[0, 0].tolist()):
            assert sorted(getattr(got, idx)[0, 0, row, :count].tolist()) == sorted(
                getattr(want, idx)[0, 0, row, :count].tolist()
            ), (idx, row)
    if seed == 2:
        assert int(want.full_kv_num_blocks.sum()) > 0


@pytest.mark.skipif(not available("flex", "cpu"), reason="flex_attention unavailable")
@torch.no_grad()
def test_flex_builds_one_block_mask_per_forward(monkeypatch):
    from pgolf.model import attention

    built = []
    original = attention._block_structure
    monkeypatch.setattr(attention, "_block_structure", lambda doc, block: built.append(1) or original(doc, block))
    model = GPT(model_cfg())
    for m in model.modules():
        if isinstance(m, Attention):
            m.attend = DocAttention("flex")
    ids = torch.randint(2, 64, (1, 32))
    cu = torch.tensor([0, 9, 32, 32], dtype=torch.int32)
    model(ids, cu_seqlens=cu, looped=True)
    assert len(built) == 1 < model_cfg().num_layers
    model(ids, cu_seqlens=cu.clone(), looped=True)  # a new batch's cu_seqlens: a new mask
    assert len(built) == 2


def test_segment_attention_equals_a_dense_masked_reference():
    """The gather-per-segment path against one dense block-diagonal causal mask (float64, GQA, two rows)."""
    from pgolf.model.attention import sdpa_gather_attention

    g = torch.Generator().manual_seed(2)
    B, T, H, G, D = 2, 150, 4, 2, 8
    q = torch.randn(B, T, H, D, generator=g, dtype=torch.float64)
    k, v = (torch.randn(B, T, G, D, generator=g, dtype=torch.float64) for _ in range(2))
    cu = torch.tensor([0, 17, 64, 100, 150, 151, 200, 230, 299, 300, 300, 300], dtype=torch.int32)
    seg = torch.searchsorted(cu[1:].long(), torch.arange(B * T), right=True).view(B, T)  # segment of each position
    mask = (seg[:, :, None] == seg[:, None, :]) & torch.ones(T, T, dtype=torch.bool).tril()
    qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
    ref = torch.nn.functional.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask[:, None], enable_gqa=True)
    torch.testing.assert_close(sdpa_gather_attention(q, k, v, cu), ref.transpose(1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.usefixtures("fresh_dynamo")
def test_sdpa_gather_op_passes_opcheck_and_matches_eager_gradients():
    g = torch.Generator().manual_seed(0)
    q, k, v = (t.requires_grad_() for t in qkv(g, 1, 40, 4, 2, 8))
    cu = random_cu(g, 40, 16)
    torch.library.opcheck(torch.ops.pgolf.sdpa_gather.default, (q, k, v, cu))  # schema, fake impl, autograd
    out = torch.ops.pgolf.sdpa_gather(q, k, v, cu)
    grads = torch.autograd.grad((out * out.detach().sin()).sum(), (q, k, v))
    ref = attention._sdpa_gather(q, k, v, cu)
    ref_grads = torch.autograd.grad((ref * ref.detach().sin()).sum(), (q, k, v))
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-14)
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.usefixtures("fresh_dynamo")
def test_flash_bound_is_checked_in_eager_calls():
    g = torch.Generator().manual_seed(1)
    q, k, v = qkv(g, 1, 32, 2, 2, 4)
    cu = torch.tensor([0, 20, 32, 32], dtype=torch.int32)
    assert attention._flattened_segments(q, k, v, cu, None)[2] == 20
    assert attention._flattened_segments(q, k, v, cu, 24)[2] == 24  # the bound, as the compiled graph uses it
    with pytest.raises(ValueError, match="exceeds the attention bound max_seqlen=16"):
        attention._flattened_segments(q, k, v, cu, 16)
