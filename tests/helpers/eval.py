"""The evaluation tests' material: character-level validation streams, a tiny jittered model, a mode's run on them
(as the evaluate stage runs it), the n-gram tilt's streams and distributions."""

from __future__ import annotations

import numpy as np
import torch

from pgolf.dist import group_rank_world
from pgolf.eval.modes import enabled_modes, run_mode
from pgolf.model.gpt import GPT
from pgolf.score.bpb import ValData
from pgolf.score.scorer import scored_documents
from pgolf.score.scores import EvalContext, TokenRecorder
from tests.helpers.config import eval_cfg, model_cfg, score_cfg

BOS, VOCAB = 1, 64
CHARS = "abcdefghijklmnopqrstuvwxyz .,éü東京"  # ids 2.., some of several UTF-8 bytes


def tiny_model(seed: int = 0, noise: float = 0.3) -> GPT:
    """2 layers of width 32, vocab 64, with every weight jittered so that context and all gates matter."""
    cfg = model_cfg(num_layers=2, parallel_start_layer=1, loop_start=0, loop_end=0, num_loops=1, xsa_last_n=1)
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(noise * torch.randn_like(p))
    return model.eval()


def text_val(texts: list[str]) -> ValData:
    """A character-level val stream of some texts: BOS + one id per character, bytes = the character's UTF-8."""
    ids, nbytes = [], []
    for text in texts:
        ids += [BOS] + [2 + CHARS.index(ch) for ch in text]
        nbytes += [0] + [len(ch.encode("utf-8")) for ch in text]
    return ValData(np.array(ids, dtype=np.uint16), np.array(nbytes, dtype=np.int64), "sidecar")


def random_texts(num_docs: int, lo: int, hi: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARS), size=int(rng.integers(lo, hi)))) for _ in range(num_docs)]


def repetitive_texts(num_docs: int, length: int, period: int, seed: int = 0) -> list[str]:
    """Documents that repeat a random pattern: easy to learn within a document, different across documents."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARS[:26]), size=period)) * (length // period) for _ in range(num_docs)]


def texts_of(lengths: list[int], seed: int = 0) -> list[str]:
    """Random documents of the given lengths (each document has its length + 1 targets)."""
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list(CHARS), size=n)) for n in lengths]


def run(name, model, val, cfg, recorder=None, score=None):
    score = score or score_cfg()
    docs = scored_documents(val, score, BOS)
    return run_mode(name, model, val, docs, score, cfg, EvalContext(True, *group_rank_world(), recorder=recorder))


def run_modes(model, val, cfg, score=None):
    """Every enabled mode, each on a fresh copy of ``model`` (as the evaluate stage runs them)."""
    return {name: run(name, model, val, cfg, score=score) for name in enabled_modes(cfg)}


def recorded(name, model, val, cfg):
    recorder = TokenRecorder(len(val.tokens))
    result = run(name, model, val, cfg, recorder)
    return result, recorder


ZERO_LR = {"lr": 0.0, "global_sgd": {"lr": 0.0, "momentum": 0.9, "epochs": 1, "chunk_tokens": 40, "seq_len": 24,
                                     "grad_clip": 1.0}}  # fmt: skip


def wide_cfg(width: int):
    """Windows and TTT contexts of up to ``width`` tokens (several buckets), LoRA batches of 3 and 2 documents."""
    return eval_cfg(sliding={"seq_len": width, "stride": 40},
                    lora_ttt={"chunk_size": 24, "context": width, "phases": [3]},
                    chunk_sgd={"seq_len": width, "stride": 40, "chunk_tokens": 300})  # fmt: skip


# --- the n-gram tilt ---

TILT = {"enabled": True, "order": 4, "threshold": 0.5, "boost": 2.625}


def tilt_cfg(**tilt):
    return eval_cfg(lora_ttt={"ngram_tilt": {**TILT, **tilt}})


def random_steps(seed: int, num_docs: int = 30, vocab: int = 4, chunk: int = 5, batch: int = 3):
    """A stream of short random documents and a TTT-like scoring order: shuffled batches of documents, chunk c of
    every document of the batch in step c."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 40, num_docs)
    tokens = np.concatenate([np.concatenate([[0], rng.integers(1, vocab, n)]) for n in lengths] + [[0]])
    starts = np.flatnonzero(tokens == 0)[:-1]
    ends = np.append(starts[1:], len(tokens) - 1)
    order, steps = rng.permutation(num_docs), []
    for b in range(0, num_docs, batch):
        docs = order[b : b + batch]
        for c in range(0, int(lengths[docs].max()) + 1, chunk):
            parts = [np.arange(starts[d] + 1 + c, min(starts[d] + 1 + c + chunk, ends[d] + 1)) for d in docs]
            owners = [np.full(p.size, starts[d]) for p, d in zip(parts, docs, strict=True)]
            steps.append((np.concatenate(parts), np.concatenate(owners)))
    return tokens, steps


def tilt_case(seed: int = 0, rows: int = 12, vocab: int = 9, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    log_probs = torch.randn(rows, vocab, generator=gen, dtype=torch.float64).mul(3).log_softmax(-1).to(dtype)
    hint = torch.randint(0, vocab, (rows,), generator=gen)
    hint[:3] = -1
    hint[3] = log_probs[3].argmax()  # p(h) close to 1
    beta = torch.rand(rows, generator=gen, dtype=torch.float64) * 4
    beta[hint < 0] = 0.0
    beta[4] = 0.0
    return log_probs, hint, beta
