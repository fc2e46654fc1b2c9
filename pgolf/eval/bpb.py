"""Bits per byte: the challenge's metric, the validation data it is counted on, and the plain evaluation pass.

A model's score is how many bits it needs, per byte of original text, to encode the validation set::

    val_bpb = total nats / (ln 2 * total original UTF-8 bytes)

summed over every scored target token. Dividing by bytes instead of tokens makes the figure independent of the
tokenizer (a CaseOps tokenizer needs 18% more tokens for the same text; ``val_loss`` in nats per token is not
comparable across tokenizers, ``val_bpb`` is). The bytes charged to a target are the original bytes *that token*
stands for, indexed by target position: ``target_bytes[i]`` is charged for predicting ``tokens[i]``. A BOS target
(the prediction that a document ends) adds its nats and its token but 0 bytes; CaseOps operators add 0 bytes too.
Sums are kept in float64 per rank and all-reduced once; per-rank bpbs are never averaged.

Where the bytes come from (:func:`load_val`):

* the validation byte sidecar ``val_bytes_*.bin`` when present: exact for any tokenizer, CaseOps included;
* otherwise the tokenizer lookup tables (the challenge's convention for the published shards): ``base_bytes`` of
  the target plus one for a leading "▁" unless the previous token is a boundary. These overcount CaseOps operators
  (3 bytes each instead of 0, ~9% of the denominator), so a CaseOps tokenizer without a sidecar is an error.

The plain pass (:func:`evaluate`), the record's ``eval_val`` diagnostic: the val stream is truncated to
``k * seq_len + 1`` tokens (the tail of the last document is never scored, and the scored set depends on
``seq_len``) and cut into ``k`` non-overlapping windows: inputs ``tokens[s:s+seq_len]``, targets
``tokens[s+1:s+seq_len+1]``. Each target is scored exactly once, with the context of its own document inside its
window only (0 to ``seq_len - 1`` tokens; a document that began in an earlier window restarts at the window start).
Two deliberate differences from the reference: every window boundary is a segment boundary (the reference flattens
32 windows into one row and lets a document run across window boundaries inside a batch, so its figure depends on
the batch size), and ranks split the windows contiguously without dropping any (the reference truncates each rank's
share to a multiple of its batch, scoring 99.70% of the targets, a set that depends on the world size). Our figure
is therefore the same for any batch size and any number of ranks.

References: the record's ``ValidationData``, ``build_sentencepiece_luts``, ``_loss_bpb`` and ``eval_val``
(train_gpt.py l. 450–535, 2726–2795); nanochat ``loss_eval.evaluate_bpb``; spec record-eval-data.md A2–A5 and
B9 (pitfalls: glob collision, LUT on CaseOps, target indexing, double counting, doc boundaries, truncation).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from pgolf import tokenizer as tok
from pgolf.data import shards
from pgolf.dist import autocast, dist_info
from pgolf.errors import PgolfError
from pgolf.train.loader import CU_PAD_MULTIPLE, build_cu_seqlens

ByteCount = Literal["sidecar", "tokenizer_luts"]
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SHARDS_MANIFEST = "manifest.json"


def loss_to_bpb(nats: float, bytes_: int) -> float:
    """Bits per byte of ``nats`` summed over targets that stand for ``bytes_`` original bytes."""
    if bytes_ <= 0:
        raise ValueError(f"bits per byte needs a positive byte count, got {bytes_}")
    return nats / (math.log(2) * bytes_)


@dataclass
class BpbTotals:
    """The three sums behind the metric: nats (float64), scored target tokens and their original bytes."""

    nats: float = 0.0
    tokens: int = 0
    bytes: int = 0

    def add(self, nats: float, tokens: int, bytes_: int) -> None:
        """Accumulate the sums of one batch."""
        self.nats += float(nats)
        self.tokens += int(tokens)
        self.bytes += int(bytes_)

    @property
    def val_loss(self) -> float:
        """Mean nats per scored target token."""
        if self.tokens <= 0:
            raise ValueError("no tokens were scored")
        return self.nats / self.tokens

    @property
    def val_bpb(self) -> float:
        return loss_to_bpb(self.nats, self.bytes)

    def all_reduce(self) -> BpbTotals:
        """The totals summed over all ranks (one float64 all-reduce); a copy when not distributed.

        Returns a new object, so the local sums are never reduced twice.
        """
        if not (dist.is_available() and dist.is_initialized()):
            return BpbTotals(self.nats, self.tokens, self.bytes)
        on_gpu = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        # Integers below 2**53 are exact in float64.
        sums = torch.tensor([self.nats, self.tokens, self.bytes], dtype=torch.float64, device=device)
        dist.all_reduce(sums, op=dist.ReduceOp.SUM)
        nats, tokens, bytes_ = sums.tolist()
        return BpbTotals(nats, round(tokens), round(bytes_))


@dataclass
class ValData:
    """The validation stream and the original bytes charged for predicting each of its tokens."""

    tokens: np.ndarray  # uint16 (or any integer) token ids, documents as BOS + ids
    target_bytes: np.ndarray  # int64; target_bytes[i] is charged for predicting tokens[i]; [0] = 0 (never a target)
    byte_count: ByteCount

    def __post_init__(self) -> None:
        if self.tokens.shape != self.target_bytes.shape or self.tokens.ndim != 1:
            shapes = f"tokens {self.tokens.shape}, target_bytes {self.target_bytes.shape}"
            raise ValueError(f"{shapes}: both must be 1-D and of equal length")


def _read_shards_manifest(shard_dir: Path) -> dict | None:
    path = shard_dir / SHARDS_MANIFEST
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _check_manifest(shard_dir: Path, meta: dict, has_sidecar: bool) -> None:
    """Fail when the tokenize stage's manifest disagrees with the tokenizer or the files present."""
    manifest = _read_shards_manifest(shard_dir)
    if manifest is None:
        return
    if manifest.get("tokenizer_sha256") not in (None, meta.get("model_sha256")):
        raise PgolfError(f"{shard_dir}: shards were made by another tokenizer than {meta.get('model_sha256')}")
    if manifest.get("byte_count") == "sidecar" and not has_sidecar:
        raise PgolfError(f"{shard_dir}: manifest says byte_count=sidecar but no val_bytes_*.bin files are present")


def load_val(shard_dir: Path | str, tokenizer_dir: Path | str) -> ValData:
    """The val tokens (``val_*.bin`` only, never the sidecar) with bytes from the sidecar or the tokenizer LUTs."""
    shard_dir = Path(shard_dir)
    meta = tok.read_meta(tokenizer_dir)
    has_sidecar = bool(shards.shard_paths(shard_dir, "val_bytes"))
    _check_manifest(shard_dir, meta, has_sidecar)
    vocab = meta["vocab_size"]
    if has_sidecar:
        tokens, counts = shards.load_val_with_bytes(shard_dir, vocab_size=vocab)
        target_bytes = counts.astype(np.int64)
        target_bytes[:1] = 0
        return ValData(tokens, target_bytes, "sidecar")
    if meta["caseops"]:
        raise PgolfError(
            f"{shard_dir}: the tokenizer uses CaseOps but there is no val_bytes_*.bin sidecar; the lookup-table "
            "byte count would charge 3 bytes per case operator (0 original bytes) and inflate the denominator by "
            "~9% (record-eval-data.md B9 pitfall 2); re-run the tokenize stage, which writes the sidecar"
        )
    tokens = shards.load_shards(shard_dir, "val", vocab_size=vocab)
    target_bytes = np.concatenate([[0], tok.lut_bytes(tokens, tok.load_luts(tokenizer_dir))]).astype(np.int64)
    return ValData(tokens, target_bytes, "tokenizer_luts")


def doc_windows(num_tokens: int, seq_len: int, *, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """This rank's evaluation windows as token ranges ``[start, start + seq_len + 1)`` of the val stream.

    The stream is cut into ``(num_tokens - 1) // seq_len`` non-overlapping windows of ``seq_len`` targets (the
    targets of window ``[s, e)`` are ``tokens[s+1:e]``); rank ``r`` gets the contiguous share
    ``[W r / world, W (r+1) / world)``. Every window goes to exactly one rank; none is dropped.
    """
    if seq_len <= 0 or not 0 <= rank < world_size:
        raise ValueError(f"bad window geometry: seq_len={seq_len}, rank={rank}, world_size={world_size}")
    num_windows = (num_tokens - 1) // seq_len
    if num_windows <= 0:
        raise ValueError(f"the val stream has {num_tokens} tokens, fewer than one window (seq_len + 1 = {seq_len + 1})")
    lo, hi = num_windows * rank // world_size, num_windows * (rank + 1) // world_size
    return [(w * seq_len, w * seq_len + seq_len + 1) for w in range(lo, hi)]


def window_cu_seqlens(inputs: np.ndarray, bos_id: int, pad_multiple: int = CU_PAD_MULTIPLE) -> torch.Tensor:
    """``cu_seqlens`` of a ``[B, T]`` batch of windows flattened to one stream of ``B*T`` tokens.

    Segments start at every row start and every BOS, so attention never crosses a window or a document.
    """
    num_rows, seq_len = inputs.shape
    flat = inputs.reshape(-1)
    starts = np.union1d(np.arange(0, flat.size, seq_len), np.flatnonzero(flat == bos_id))
    return build_cu_seqlens(starts, flat.size, seq_len, pad_multiple)


def to_device(batch: np.ndarray | torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """A host batch (tokens, masks, ``cu_seqlens``) on ``device``: through pinned memory and a non-blocking copy
    on CUDA, so the copy overlaps the work already queued; unchanged on the CPU."""
    tensor = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
    if torch.device(device).type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _window_batch(val: ValData, windows: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray, int]:
    """Inputs and targets ``[B, T]`` (int64) of some windows, and the bytes of their targets."""
    rows = np.stack([np.asarray(val.tokens[s:e], dtype=np.int64) for s, e in windows])
    num_bytes = sum(int(val.target_bytes[s + 1 : e].sum()) for s, e in windows)
    return rows[:, :-1], rows[:, 1:], num_bytes


def evaluate(
    loss_fn: LossFn,
    val: ValData,
    *,
    seq_len: int,
    batch_windows: int,
    bos_id: int,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    device: torch.device | str = "cpu",
    pad_multiple: int = CU_PAD_MULTIPLE,
) -> BpbTotals:
    """Score every target of the truncated val stream once, in doc-masked windows; totals over all ranks.

    ``loss_fn(inputs [B, T], targets [B, T], cu_seqlens)`` returns the per-token nats ``[B, T]``; the int64 inputs
    and targets and the int32 ``cu_seqlens`` of the flattened ``B*T`` stream (every row start is a segment start)
    are on ``device``. ``B`` is ``batch_windows`` except for a rank's last, smaller batch.
    """
    if batch_windows <= 0:
        raise ValueError(f"batch_windows must be positive, got {batch_windows}")
    windows = doc_windows(len(val.tokens), seq_len, rank=rank, world_size=world_size)
    nats: torch.Tensor | None = None
    totals = BpbTotals()
    bar = tqdm(total=len(windows), desc="eval", unit="win", disable=not (progress and rank == 0))
    with torch.no_grad(), bar:
        for i in range(0, len(windows), batch_windows):
            chunk = windows[i : i + batch_windows]
            inputs, targets, num_bytes = _window_batch(val, chunk)
            cu_seqlens = window_cu_seqlens(inputs, bos_id, pad_multiple)
            args = (torch.from_numpy(inputs), torch.from_numpy(targets), cu_seqlens)
            out = loss_fn(*(to_device(t, device) for t in args))
            if tuple(out.shape) != targets.shape:
                raise ValueError(f"loss_fn returned shape {tuple(out.shape)}, expected per-token nats {targets.shape}")
            batch_nats = out.detach().double().sum()  # stays on the device: no sync per batch
            nats = batch_nats if nats is None else nats + batch_nats
            totals.add(0.0, targets.size, num_bytes)
            bar.update(len(chunk))
    totals.nats = float(nats) if nats is not None else 0.0
    return totals.all_reduce()


def evaluate_model(
    model: torch.nn.Module, val: ValData, *, seq_len: int, batch_windows: int, looped: bool, progress: bool = False
) -> BpbTotals:
    """:func:`evaluate` of a pgolf GPT on this process's device and rank (bf16 autocast on CUDA)."""
    info = dist_info()
    model = model.to(info.device).eval()

    def loss_fn(x: torch.Tensor, y: torch.Tensor, cu: torch.Tensor) -> torch.Tensor:
        with autocast(info.device):
            return model(x, y, cu_seqlens=cu, looped=looped, reduction="none")

    return evaluate(loss_fn, val, seq_len=seq_len, batch_windows=batch_windows, bos_id=model.cfg.bos_id,
                    rank=info.rank, world_size=info.world_size, progress=progress, device=info.device)  # fmt: skip
