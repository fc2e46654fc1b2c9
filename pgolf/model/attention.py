"""Document-isolated causal attention: interchangeable backends, chosen once when :class:`Attention` is built.

Every backend has the signature ``fn(q, k, v, cu_seqlens, max_seqlen=None) -> y`` with q [B,T,H,Dh], k/v
[B,T,G,Dh] (G divides H, query head h reads KV head h // (H/G)), y [B,T,H,Dh], softmax scale 1/sqrt(Dh).
``cu_seqlens`` (int32) holds segment offsets into the flattened B*T stream, padded at the end by repeating the
total (empty segments, see :func:`pgolf.train.loader.build_cu_seqlens`); a position attends causally within its
own segment only, and a position outside every segment gets zeros. ``cu_seqlens=None`` is plain causal attention
over each row.

* ``sdpa_gather`` (any device, the exact reference): segments are gathered into rows of their own, attended with
  causal SDPA and scattered back.
* ``flex``: ``torch.nn.attention.flex_attention`` with a document-causal ``BlockMask`` from the segment id of each
  position. Eager on CPU (unfused: materialises the scores; forward only, PyTorch has no CPU flex backward);
  compiled on CUDA.
* ``varlen``: ``torch.nn.attention.varlen.varlen_attn`` (PyTorch's flash varlen kernel, torch >= 2.10), CUDA,
  fp16/bf16. Its arguments changed between releases (2.10: ``is_causal``; 2.11: ``window_size``; later:
  ``enable_gqa`` too), so the call is built from the installed function's signature when the backend is built, and
  the KV heads are repeated where grouped-query attention is not a parameter.
* ``fa3``: FlashAttention-3 ``flash_attn_varlen_func`` from ``flash_attn_interface`` (the record's kernel), CUDA,
  fp16/bf16; imported lazily.

The CUDA kernels fall back to ``sdpa_gather`` for other dtypes.

Under ``torch.compile`` the model stays one graph with sdpa_gather, varlen and fa3:

* ``sdpa_gather`` is the custom op ``pgolf::sdpa_gather`` (data-dependent shapes stay inside it; its backward is
  the op ``pgolf::sdpa_gather_backward``, a ``torch.func.vjp`` of the same eager code). Eager calls keep the
  native autograd path.
* ``varlen`` and ``fa3`` need ``max_seqlen`` as a host integer. A caller that knows a bound (training: segments
  are cut at ``train.seq_len``) sets :attr:`DocAttention.max_seqlen`, as the record passes 2048; without one the
  longest segment is read on the host (a sync, eager only). Eager calls check the bound.
* ``flex`` builds its block mask eagerly (``torch.compiler.disable``), a graph break; the mask is built from the
  segments' block structure (no dense n x n mask) once per ``cu_seqlens`` tensor, so the layers of one forward share it.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable
from functools import cache

import torch
import torch.nn.functional as F
from torch import Tensor

AttentionFn = Callable[[Tensor, Tensor, Tensor, Tensor | None, int | None], Tensor]
BACKENDS = ("sdpa_gather", "flex", "varlen", "fa3")
_CUDA_PREFERENCE = ("fa3", "varlen", "flex")
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def _causal(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Plain causal attention over each row (the ``cu_seqlens=None`` path of every backend)."""
    y = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)), is_causal=True, enable_gqa=True)
    return y.transpose(1, 2)


def _covered(cu: Tensor, n: int) -> Tensor:
    """(n,) bool: which flattened positions lie inside some segment, i.e. in [cu[0], cu[-1])."""
    pos = torch.arange(n, device=cu.device)
    return (pos >= cu[0]) & (pos < cu[-1])


def _sdpa_gather(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    """Segments gathered into rows of their own (padded at the end, which causal attention never looks at),
    attended with plain causal SDPA, and scattered back, like varlen flash attention."""
    B, T, H, Dh = q.shape
    cu = cu_seqlens.long()
    starts, lengths = cu[:-1], cu[1:] - cu[:-1]
    starts, lengths = starts[lengths > 0], lengths[lengths > 0]
    if not len(lengths):
        return q.new_zeros(B, T, H, Dh)
    offsets = torch.arange(int(lengths.max()), device=q.device)
    index = (starts[:, None] + offsets).clamp(max=B * T - 1)  # (segments, longest)
    valid = offsets < lengths[:, None]
    rows = [t.reshape(B * T, *t.shape[2:])[index].transpose(1, 2) for t in (q, k, v)]  # (S, heads, L, Dh)
    y = F.scaled_dot_product_attention(*rows, is_causal=True, enable_gqa=True).transpose(1, 2)  # (S, L, H, Dh)
    out = q.new_zeros(B * T, H, Dh).index_put((index[valid],), y[valid])
    return out.view(B, T, H, Dh)


@torch.library.custom_op("pgolf::sdpa_gather", mutates_args=())
def _sdpa_gather_op(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    return _sdpa_gather(q, k, v, cu_seqlens)


@torch.library.custom_op("pgolf::sdpa_gather_backward", mutates_args=())
def _sdpa_gather_backward_op(
    grad: Tensor, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    _, vjp = torch.func.vjp(lambda q, k, v: _sdpa_gather(q, k, v, cu_seqlens), q, k, v)
    return tuple(g.contiguous() for g in vjp(grad.contiguous()))  # type: ignore[return-value]


@_sdpa_gather_op.register_fake
def _(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> Tensor:
    return q.new_empty(q.shape)


@_sdpa_gather_backward_op.register_fake
def _(grad: Tensor, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _sdpa_gather_setup(ctx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _sdpa_gather_grad(ctx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor, None]:
    q, k, v, cu = ctx.saved_tensors
    return (*_sdpa_gather_backward_op(grad, q, k, v, cu), None)


_sdpa_gather_op.register_autograd(_sdpa_gather_grad, setup_context=_sdpa_gather_setup)


def sdpa_gather_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int | None = None
) -> Tensor:
    """The exact reference backend (any device, any dtype); ``max_seqlen`` is not needed and is ignored."""
    if cu_seqlens is None:
        return _causal(q, k, v)
    if torch.compiler.is_compiling():
        return _sdpa_gather_op(q, k, v, cu_seqlens)
    return _sdpa_gather(q, k, v, cu_seqlens)


def _document_ids(cu: Tensor, n: int) -> Tensor:
    """(n,) segment id of every flattened position, -1 outside every segment."""
    pos = torch.arange(n, device=cu.device)
    return torch.where(_covered(cu, n), torch.searchsorted(cu, pos, right=True) - 1, -1)


def _block_structure(doc: Tensor, block: int) -> tuple[Tensor, Tensor]:
    """(partial, full) (nb, nb) bools over query x key blocks of ``block`` positions for the document-causal mask,
    from per-block document ranges in O(nb^2) (never n x n). Segment ids never decrease along the stream, so a key
    block before a query block shares a document with it iff its last document is the query block's first; the
    pair needs no mask (``full``) when both blocks are whole, covered and inside that one document. Diagonal
    blocks are always partial (causal inside the block)."""
    n = doc.numel()
    nb = -(-n // block)
    padded = torch.full((nb * block,), -1, dtype=doc.dtype, device=doc.device)
    padded[:n] = doc
    blocks = padded.view(nb, block)
    covered = blocks >= 0
    big = torch.iinfo(doc.dtype).max
    first = torch.where(covered, blocks, big).amin(1)
    last = blocks.amax(1)  # -1 for a block outside every segment
    any_covered = covered.any(1)
    whole = covered.all(1) & (first == last)
    i, j = torch.arange(nb, device=doc.device)[:, None], torch.arange(nb, device=doc.device)[None, :]
    both = any_covered[:, None] & any_covered[None, :]
    before = (j < i) & both & (last[None, :] == first[:, None])
    full = before & whole[:, None] & whole[None, :]
    partial = (before & ~full) | ((i == j) & both)
    return partial, full


def _kv_lists(allowed: Tensor) -> tuple[Tensor, Tensor]:
    """(num_blocks (1, 1, nb) int32, indices (1, 1, nb, nb) int32, the allowed ones first in order) of a bool map."""
    order = torch.argsort((~allowed).to(torch.int8), dim=1, stable=True)
    return allowed.sum(1, dtype=torch.int32)[None, None], order.to(torch.int32)[None, None]


_EAGER: dict[str, Callable] = {}
"""The ``torch.compiler.disable``'d version of every :func:`eager_only` function (made by :func:`prepare_compile`)."""
_EAGER_ONLY: list[Callable] = []


def eager_only(fn: Callable) -> Callable:
    """``fn``, run eagerly (a graph break) when a compiled graph calls it. The disabled version is made by
    :func:`prepare_compile`, which :mod:`pgolf.compiler` calls before it compiles anything: importing
    ``torch._dynamo`` (about 1 s) is then paid only by a process that compiles."""

    @functools.wraps(fn)
    def call(*args: object, **kwargs: object) -> object:
        if torch.compiler.is_compiling():
            if fn.__qualname__ not in _EAGER:  # compiled without prepare_compile(): one more break, no error
                _EAGER[fn.__qualname__] = torch.compiler.disable(fn)
            return _EAGER[fn.__qualname__](*args, **kwargs)
        return fn(*args, **kwargs)

    _EAGER_ONLY.append(fn)
    return call


def prepare_compile() -> None:
    """Make the disabled versions of the :func:`eager_only` functions (before compiling a model)."""
    for fn in _EAGER_ONLY:
        _EAGER.setdefault(fn.__qualname__, torch.compiler.disable(fn))


_MASK_CACHE: list = []
"""[cu_seqlens tensor, (its version, n, block), block mask] of the last call: the layers of a forward reuse it."""


@eager_only  # the mask depends on the data; the flex kernel itself stays in the graph
def document_block_mask(cu_seqlens: Tensor, n: int, block: int = 128):  # -> BlockMask
    """Causal, same-segment ``BlockMask`` over a flattened stream of ``n`` positions (segment id by position;
    positions outside every segment attend to nothing), built from the block structure of the segments
    (:func:`_block_structure`, no dense n x n mask) and built once per ``cu_seqlens`` tensor: the layers of one
    forward share it."""
    from torch.nn.attention.flex_attention import BlockMask

    key = (cu_seqlens._version, n, block)
    if _MASK_CACHE and _MASK_CACHE[0] is cu_seqlens and _MASK_CACHE[1] == key:
        return _MASK_CACHE[2]
    doc = _document_ids(cu_seqlens.long(), n)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (doc[q_idx] == doc[kv_idx]) & (doc[q_idx] >= 0)

    partial, full = _block_structure(doc, block)
    mask = BlockMask.from_kv_blocks(*_kv_lists(partial), *_kv_lists(full), BLOCK_SIZE=block, mask_mod=mask_mod,
                                    seq_lengths=(n, n))  # fmt: skip
    _MASK_CACHE[:] = [cu_seqlens, key, mask]
    return mask


@cache
def _compiled_flex() -> Callable:
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_doc_attention(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int | None = None
) -> Tensor:
    """FlexAttention over the flattened stream with a document-causal block mask (``max_seqlen`` is ignored)."""
    if cu_seqlens is None:
        return _causal(q, k, v)
    from torch.nn.attention.flex_attention import flex_attention

    B, T, H, Dh = q.shape
    n = B * T
    mask = document_block_mask(cu_seqlens, n)
    rows = [t.reshape(1, n, t.size(2), Dh).transpose(1, 2) for t in (q, k, v)]  # (1, heads, n, Dh)
    flex = _compiled_flex() if q.is_cuda else flex_attention  # eager on CUDA would materialise n x n scores
    y = flex(*rows, block_mask=mask, enable_gqa=True).transpose(1, 2).reshape(n, H, Dh)
    y = torch.where(_covered(cu_seqlens.long(), n)[:, None, None], y, 0)
    return y.view(B, T, H, Dh)


def _flattened_segments(
    q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor, max_seqlen: int | None
) -> tuple[list[Tensor], Tensor, int]:
    """(q, k, v) as (B*T, heads, Dh), cu_seqlens as int32 and the longest segment: ``max_seqlen`` when given
    (checked against the data in eager calls), else read on the host."""
    rows = [t.reshape(-1, *t.shape[2:]) for t in (q, k, v)]
    cu = cu_seqlens.to(torch.int32)
    if max_seqlen is not None and torch.compiler.is_compiling():
        return rows, cu, max_seqlen
    longest = int((cu[1:] - cu[:-1]).max())
    if max_seqlen is None:
        return rows, cu, longest
    if longest > max_seqlen:
        raise ValueError(
            f"a segment of {longest} tokens exceeds the attention bound max_seqlen={max_seqlen}: cut segments at "
            "that length (build_cu_seqlens max_seq_len) or raise DocAttention.max_seqlen"
        )
    return rows, cu, max_seqlen


def _host_bound(fn: AttentionFn) -> AttentionFn:
    """``fn`` as is when a static ``max_seqlen`` is given; without one it reads the longest segment on the host,
    which a compiled graph cannot do, so that call runs eagerly (a graph break)."""
    eager = eager_only(fn)

    def call(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int | None = None) -> Tensor:
        if max_seqlen is None and cu_seqlens is not None:
            return eager(q, k, v, cu_seqlens, None)
        return fn(q, k, v, cu_seqlens, max_seqlen)

    call.__name__, call.__doc__ = fn.__name__, fn.__doc__
    return call


def varlen_function() -> Callable:
    """The installed ``torch.nn.attention.varlen.varlen_attn``."""
    from torch.nn.attention.varlen import varlen_attn

    return varlen_attn


def varlen_arguments(fn: Callable) -> tuple[dict, bool]:
    """(causal keyword arguments, native grouped-query) for a ``varlen_attn`` of this signature: torch 2.10 takes
    ``is_causal``, 2.11 ``window_size=(-1, 0)`` without GQA, newer ones also ``enable_gqa``. Where GQA is not a
    parameter the KV heads are repeated (the kernel's documented contract is one KV head per query head)."""
    params = inspect.signature(fn).parameters
    if "window_size" in params:
        causal: dict = {"window_size": (-1, 0)}
    elif "is_causal" in params:
        causal = {"is_causal": True}
    else:
        raise RuntimeError(
            f"torch {torch.__version__}: varlen_attn{inspect.signature(fn)} takes neither window_size nor is_causal; "
            "choose another attention backend (sdpa_gather, flex or fa3)"
        )
    gqa = "enable_gqa" in params
    return ({**causal, "enable_gqa": True} if gqa else causal), gqa


def make_varlen_attention(fn: Callable | None = None) -> AttentionFn:
    """The ``varlen`` backend around ``fn`` (default: the installed ``varlen_attn``), its call built once, here,
    from ``fn``'s signature (:func:`varlen_arguments`), so nothing is inspected while a graph is traced."""
    fn = fn or varlen_function()
    kwargs, gqa = varlen_arguments(fn)

    def varlen_attention(
        q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int | None = None
    ) -> Tensor:
        """PyTorch's varlen flash kernel (a custom op), causal, grouped-query, document-isolated."""
        if q.dtype not in _FLASH_DTYPES:
            return sdpa_gather_attention(q, k, v, cu_seqlens)
        if cu_seqlens is None:
            return _causal(q, k, v)
        (qf, kf, vf), cu, longest = _flattened_segments(q, k, v, cu_seqlens, max_seqlen)
        if not gqa and kf.size(1) != qf.size(1):
            rep = qf.size(1) // kf.size(1)
            kf, vf = kf.repeat_interleave(rep, dim=1), vf.repeat_interleave(rep, dim=1)
        y = fn(qf, kf, vf, cu, cu, longest, longest, **kwargs)
        y = torch.where(_covered(cu.long(), qf.size(0))[:, None, None], y, 0)
        return y.view(q.shape)

    return _host_bound(varlen_attention)


@_host_bound
def fa3_attention(q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None, max_seqlen: int | None = None) -> Tensor:
    """FlashAttention-3 varlen, as the record calls it (causal, default scale 1/sqrt(Dh), native GQA)."""
    if q.dtype not in _FLASH_DTYPES:
        return sdpa_gather_attention(q, k, v, cu_seqlens)
    from flash_attn_interface import flash_attn_func, flash_attn_varlen_func

    if cu_seqlens is None:
        out = flash_attn_func(q, k, v, causal=True)
    else:
        (qf, kf, vf), cu, longest = _flattened_segments(q, k, v, cu_seqlens, max_seqlen)
        out = flash_attn_varlen_func(qf, kf, vf, cu, cu, longest, longest, causal=True)
    y = out[0] if isinstance(out, tuple) else out  # some FA3 builds also return the LSE
    if cu_seqlens is not None:
        y = torch.where(_covered(cu.long(), qf.size(0))[:, None, None], y, 0)
    return y.reshape(q.shape)


_FUNCTIONS: dict[str, Callable[[], AttentionFn]] = {
    "sdpa_gather": lambda: sdpa_gather_attention,
    "flex": lambda: flex_doc_attention,
    "varlen": make_varlen_attention,
    "fa3": lambda: fa3_attention,
}


def available(name: str, device: torch.device | str) -> bool:
    """Whether backend ``name`` can run on ``device`` in this environment."""
    cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if name == "sdpa_gather":
        return True
    if name == "flex":
        return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None
    if name == "varlen":
        return cuda and importlib.util.find_spec("torch.nn.attention.varlen") is not None
    if name == "fa3":
        return cuda and importlib.util.find_spec("flash_attn_interface") is not None
    raise ValueError(f"unknown attention backend {name!r}; known: {BACKENDS}")


def select_backend(device: torch.device | str, preferred: str | None = None) -> str:
    """The backend for ``device``: ``preferred`` if given (an error if it cannot run there), else on CUDA the
    first available of fa3 > varlen > flex, and on every other device the exact ``sdpa_gather``."""
    if preferred is not None:
        if not available(preferred, device):
            raise RuntimeError(f"attention backend {preferred!r} is not available on {device}")
        return preferred
    if torch.device(device).type == "cuda":
        return next((n for n in _CUDA_PREFERENCE if available(n, device)), "sdpa_gather")
    return "sdpa_gather"


def backend_fn(name: str) -> AttentionFn:
    """The attention function of backend ``name`` (varlen's call is built from the installed signature here)."""
    if name not in _FUNCTIONS:
        raise ValueError(f"unknown attention backend {name!r}; known: {BACKENDS}")
    return _FUNCTIONS[name]()


class DocAttention:
    """The attention function of one layer, resolved once at construction: the CUDA backend
    (``select_backend("cuda")``, when CUDA is present) and the CPU one. Models are built on the CPU and moved
    afterwards, so the call picks between the two pre-selected functions by the tensors' device (a static guard
    under compile), never re-running the selection. ``preferred`` forces one backend on every device.

    ``max_seqlen``: an upper bound on every segment's length, or None (see the module docstring); training sets
    it to ``train.seq_len`` (:func:`set_max_seqlen`) so that the flash backends compile without a host sync."""

    def __init__(self, preferred: str | None = None) -> None:
        self.cpu = select_backend("cpu", preferred)
        self.cuda = select_backend("cuda", preferred) if torch.cuda.is_available() else self.cpu
        self._cpu_fn, self._cuda_fn = backend_fn(self.cpu), backend_fn(self.cuda)
        self.max_seqlen: int | None = None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, cu_seqlens: Tensor | None) -> Tensor:
        return (self._cuda_fn if q.is_cuda else self._cpu_fn)(q, k, v, cu_seqlens, self.max_seqlen)

    def __repr__(self) -> str:
        return f"DocAttention(cpu={self.cpu!r}, cuda={self.cuda!r}, max_seqlen={self.max_seqlen})"


def set_max_seqlen(model: torch.nn.Module, max_seqlen: int | None) -> None:
    """Give every :class:`DocAttention` of ``model`` the segment-length bound ``max_seqlen`` (None: read it from
    the data). Set it before compiling: the compiled graph keeps the value it saw."""
    if max_seqlen is not None and max_seqlen < 1:
        raise ValueError(f"max_seqlen must be a positive length or None, got {max_seqlen}")
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, DocAttention):
                value.max_seqlen = max_seqlen
