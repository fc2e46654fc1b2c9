"""The deterministic document-packing training loader.

The training shards are one stream of documents, each ``BOS, tok_1, ..., tok_k`` (no EOS). The loader walks that
stream in order, with no shuffling, so the data order is identical for every seed and every run:

* One :meth:`PackingLoader.next_batch` call serves one micro-step. With ``n = tokens_per_rank``, every rank holds
  the same ``cursor`` and rank ``r`` takes the slab ``[cursor + r (n+1), cursor + (r+1) (n+1))``: inputs are
  ``slab[:-1]``, targets ``slab[1:]``, one packed row ``[1, n]``. The cursor then moves by ``world_size (n+1)``, so
  one micro-step reads one contiguous window of one shard cut into ``world_size`` consecutive slabs. The last token
  of each slab is only a target.
* Gradient accumulation is the caller's: it calls ``next_batch`` ``grad_accum`` times per optimizer step, so the
  global batch is ``world_size * grad_accum * tokens_per_rank`` tokens.
* When a window does not fit in the rest of the shard, the rest is dropped and the next shard starts at its first
  BOS (its leading tokens are the tail of a document of the previous shard). After the last shard the loader
  wraps to shard 0 and counts an epoch.
* Attention is document-isolated through ``cu_seqlens``: segment starts at the slab start and at every BOS, and
  long documents are cut into independent ``seq_len`` chunks aligned to the document start
  (:func:`pgolf.segments.build_cu_seqlens`).
  No loss masking: the position before a BOS predicts the BOS (the end of the document).

The next shard is read and scanned for BOS on a background thread while the current one is consumed (numpy
releases the GIL for the scan), so a shard switch inside a timed step costs no disk read or scan of 10^8 tokens;
the loader's state stays exact for resume (:meth:`PackingLoader.state_dict`: the prefetch changes nothing in it).

Differences from the reference, on purpose: one prefetched shard instead of batch prefetch threads; a shard
too small for one window is an error naming the knob (the reference loops over such shards, forever when all are
too small), except the last shard, which is short by construction and is skipped like any dropped tail.

References: the record's ``DocumentPackingLoader`` and ``_build_cu_seqlens`` (train_gpt.py L592–698).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pgolf.data import shards
from pgolf.data.shards import ShardError
from pgolf.dist import to_device
from pgolf.segments import CU_PAD_MULTIPLE, build_cu_seqlens


@dataclass
class Batch:
    """One micro-step of one rank: a packed row and its document boundaries."""

    inputs: torch.Tensor  # [1, T] int64
    targets: torch.Tensor  # [1, T] int64, inputs shifted by one
    cu_seqlens: torch.Tensor  # int32, boundaries of the flattened row, padded (see build_cu_seqlens)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """The same batch on ``device``."""
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.inputs, self.targets, self.cu_seqlens)))


@dataclass
class _Shard:
    """The installed shard: its tokens (memory-mapped) and the sorted positions of its BOS tokens."""

    index: int
    tokens: np.ndarray
    bos_idx: np.ndarray


class PackingLoader:
    """Deterministic document-packing loader over ``shard_dir/train_*.bin`` (see the module docstring)."""

    def __init__(
        self,
        shard_dir: Path | str,
        *,
        tokens_per_rank: int,
        seq_len: int,
        rank: int,
        world_size: int,
        bos_id: int,
        vocab_size: int,
        pad_multiple: int = CU_PAD_MULTIPLE,
        prefetch: bool = True,
    ) -> None:
        if tokens_per_rank <= 0 or seq_len <= 0 or world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(
                f"bad loader geometry: tokens_per_rank={tokens_per_rank}, seq_len={seq_len}, "
                f"rank={rank}, world_size={world_size}"
            )
        self.tokens_per_rank = tokens_per_rank
        self.seq_len = seq_len
        self.rank = rank
        self.world_size = world_size
        self.bos_id = bos_id
        self.vocab_size = vocab_size
        self.pad_multiple = pad_multiple
        self.span = world_size * (tokens_per_rank + 1)
        self.paths = self._usable_paths(Path(shard_dir))
        self.epoch = 0
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="shard-prefetch") if prefetch else None
        self._next: tuple[int, Future[_Shard]] | None = None
        self._install(0)

    def _too_small(self, what: str) -> ShardError:
        return ShardError(
            f"{what}, but one micro-step reads world_size * (tokens_per_rank + 1) = {self.world_size} * "
            f"({self.tokens_per_rank} + 1) = {self.span} consecutive tokens of one shard; lower the training "
            "batch tokens (tokens_per_rank = batch tokens / (world_size * grad_accum)) or raise data.shard_tokens "
            "and re-run the tokenize stage"
        )

    def _usable_paths(self, shard_dir: Path) -> list[Path]:
        """The training shards; a short last shard that cannot hold one window is left out."""
        paths = shards.shard_paths(shard_dir, "train")
        if not paths:
            raise ShardError(f"{shard_dir}: no train_*.bin shards; run `dvc repro tokenize`")
        counts = [shards.read_header(p) for p in paths]
        if counts[-1] < self.span and len(paths) > 1:
            paths, counts = paths[:-1], counts[:-1]
        for path, count in zip(paths, counts, strict=True):
            if count < self.span:
                raise self._too_small(f"{path}: the shard holds {count} tokens")
        return paths

    def _load(self, index: int) -> _Shard:
        """Shard ``index`` read (memory-mapped, then paged in by the scans) with the positions of its BOS tokens;
        an id outside the model's vocabulary is a ShardError here, not an IndexError in the embedding."""
        path = self.paths[index]
        tokens = shards.read_shard(path, vocab_size=self.vocab_size, mmap=True)
        bos_idx = np.flatnonzero(tokens == self.bos_id)
        if bos_idx.size == 0:
            raise ShardError(f"{path}: no BOS (id {self.bos_id}) in the shard; a document is longer than a shard")
        if bos_idx[0] + self.span > tokens.size:
            raise self._too_small(f"{path}: the shard holds {tokens.size - bos_idx[0]} tokens after its first BOS")
        return _Shard(index, tokens, bos_idx)

    def _following(self, index: int) -> int:
        return (index + 1) % len(self.paths)

    def _install(self, index: int) -> None:
        """Make shard ``index`` current (the prefetched one when it is that shard), with the cursor at its first
        BOS, and start reading the shard after it."""
        prefetched = self._next is not None and self._next[0] == index
        # A reader's ShardError is re-raised by result(), in the step that needs the shard.
        shard = self._next[1].result() if prefetched else self._load(index)
        self._shard, self._next = shard, None
        self.cursor = int(shard.bos_idx[0])
        following = self._following(index)
        if self._pool is not None and following != index:
            self._next = (following, self._pool.submit(self._load, following))

    def _advance(self) -> None:
        """Drop the rest of the shard and install the next one, wrapping to shard 0 after the last."""
        index = self._following(self._shard.index)
        if index == 0:
            self.epoch += 1
        if index == self._shard.index:  # a single shard: it is already in memory
            self.cursor = int(self._shard.bos_idx[0])
            return
        self._install(index)

    def set_seq_len(self, seq_len: int) -> None:
        """Cut segments at ``seq_len`` from the next batch on (``train.seq_schedule``); the rows, and so the tokens
        per step, stay the same: a shorter cap only gives more, shorter segments."""
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive, got {seq_len}")
        self.seq_len = seq_len

    def next_batch(self) -> Batch:
        """This rank's slab of the next window (one micro-step); the cursor moves past the whole window."""
        if self.cursor + self.span > self._shard.tokens.size:
            self._advance()
        n = self.tokens_per_rank
        start = self.cursor + self.rank * (n + 1)
        slab = torch.from_numpy(np.array(self._shard.tokens[start : start + n + 1], dtype=np.int64))
        bos_idx = self._shard.bos_idx
        lo, hi = np.searchsorted(bos_idx, [start, start + n], side="left")
        cu_seqlens = build_cu_seqlens(bos_idx[lo:hi] - start, n, self.seq_len, self.pad_multiple)
        self.cursor += self.span
        return Batch(inputs=slab[:-1][None], targets=slab[1:][None], cu_seqlens=cu_seqlens)

    def state_dict(self) -> dict:
        """Position in the stream (shard, cursor, epoch) plus the geometry it is valid for."""
        return {
            "shard": self._shard.index,
            "cursor": self.cursor,
            "epoch": self.epoch,
            "num_shards": len(self.paths),
            "span": self.span,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume exactly where :meth:`state_dict` was taken (same shards and same window geometry)."""
        if (state["num_shards"], state["span"]) != (len(self.paths), self.span):
            raise ValueError(
                f"loader state is for {state['num_shards']} shards and {state['span']}-token windows, this loader "
                f"has {len(self.paths)} shards and {self.span}-token windows (world_size * (tokens_per_rank + 1)); "
                "resume with the same shards, world size and batch geometry"
            )
        if not 0 <= state["shard"] < len(self.paths):
            raise ValueError(f"loader state names shard {state['shard']} of {len(self.paths)}")
        self._install(int(state["shard"]))
        self.cursor = int(state["cursor"])
        self.epoch = int(state["epoch"])


class Prefetcher:
    """The loader one batch ahead, on the device: :meth:`next_batch` hands out the batch prepared at the previous
    call and prepares the next one (read, cut, pinned and copied without blocking on CUDA), so the host work and
    the copy overlap the device's work on the batch just handed out instead of following it. Its
    :meth:`state_dict` is the loader's position before the prepared batch, so a resume replays it exactly."""

    def __init__(self, loader: PackingLoader, device: torch.device) -> None:
        self.loader, self.device = loader, device
        self._pending: Batch | None = None
        self._state: dict | None = None

    @property
    def seq_len(self) -> int:
        return self.loader.seq_len

    def _prepare(self) -> None:
        self._state = self.loader.state_dict()
        batch = self.loader.next_batch()
        self._pending = Batch(*(to_device(t, self.device) for t in (batch.inputs, batch.targets, batch.cu_seqlens)))

    def next_batch(self) -> Batch:
        if self._pending is None:
            self._prepare()
        batch = self._pending
        self._prepare()
        return batch

    def _rewind(self) -> None:
        """Give the prepared batch back (the loader steps back to before it)."""
        if self._pending is not None:
            self.loader.load_state_dict(self._state)
            self._pending = self._state = None

    def set_seq_len(self, seq_len: int) -> None:
        """Cut segments at ``seq_len`` from the next batch on; a batch prepared at the old length is made again."""
        if seq_len != self.loader.seq_len:
            self._rewind()
        self.loader.set_seq_len(seq_len)

    def state_dict(self) -> dict:
        return dict(self._state) if self._pending is not None else self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self._pending = self._state = None
        self.loader.load_state_dict(state)
