"""The evaluation modes: BPB by hand, documents, exactly-once sliding windows, the same scored set and bytes in
every mode, both audits (score-first fails for #1802's multi-phase TTT only), no leak into the caller's model.

The tiny models, val streams and configs here are shared with test_ttt.py."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import model_cfg
from torch import nn

from pgolf.config import ConfigError, parse_section
from pgolf.dist import group_rank_world
from pgolf.errors import PgolfError
from pgolf.eval.audit import bytes_audit, score_first_audit, text_bytes
from pgolf.eval.modes import MODES, EvalConfig, enabled_modes, run_mode
from pgolf.model.gpt import GPT
from pgolf.score.bpb import ValData
from pgolf.score.documents import split_documents
from pgolf.score.scorer import ScoreConfig, document_windows, scored_documents
from pgolf.score.scores import EvalContext, TokenRecorder

BOS, VOCAB = 1, 64
CHARS = "abcdefghijklmnopqrstuvwxyz .,éü東京"  # ids 2.., some of several UTF-8 bytes


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not suffer when the machine is busy)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


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


def eval_cfg(**overrides: dict) -> EvalConfig:
    """Small settings of every mode; ``overrides`` update a sub-section (or set a top-level key)."""
    seq, ct = 24, 40
    raw = {
        "progress": False,
        "compile": False,
        "sliding": {"enabled": True, "seq_len": seq, "stride": 5, "batch_windows": 4},
        "lora_ttt": {"enabled": True, "rank": 4, "alpha": 8.0, "lr": 1e-2, "beta1": 0.0, "beta2": 0.99,
                     "eps": 1e-10, "weight_decay": 0.5, "chunk_size": 6, "context": seq, "batch_docs": 3,
                     "warm_start_a": True, "sites": ["q", "k", "v", "o", "mlp", "head"], "phases": [3, 6], "seed": 0,
                     "local_lr_mult": 1.0, "short_chunks": [], "asym_logit": False,
                     "ngram_tilt": {"enabled": False, "order": 16, "threshold": 0.8, "boost": 2.625},
                     "global_sgd": {"lr": 1e-2, "momentum": 0.9, "epochs": 1, "chunk_tokens": ct, "seq_len": seq,
                                    "grad_clip": 1.0}},
        "chunk_sgd": {"enabled": True, "chunk_tokens": ct, "seq_len": seq, "stride": 5, "batch_windows": 4,
                      "epochs": 2, "lr": 0.05, "momentum": 0.9, "cosine": True, "grad_clip": 1.0},
        "multi_phase": {"enabled": True, "seq_len": seq, "stride": 5, "batch_windows": 4, "passes": 2,
                        "chunk_tokens": ct, "lr": 0.05, "momentum": 0.9, "grad_clip": 1.0},
        "audit": {"score_first": True, "docs": 2},
    }  # fmt: skip
    for key, value in overrides.items():
        if isinstance(value, dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return parse_section(raw, "eval", EvalConfig)


def score_cfg(docs: int = 0, seq_len: int = 24, batch_windows: int = 4) -> ScoreConfig:
    """The ``score`` section of these tests: which documents every mode scores, and the plain score's windows."""
    return ScoreConfig(docs=docs, seq_len=seq_len, batch_windows=batch_windows)


# ---------------------------------------------------------------------------------------------------------------


def run(name, model, val, cfg, recorder=None, score=None):
    score = score or score_cfg()
    docs = scored_documents(val, score, BOS)
    return run_mode(name, model, val, docs, score, cfg, EvalContext(True, *group_rank_world(), recorder=recorder))


def run_modes(model, val, cfg, score=None):
    """Every enabled mode, each on a fresh copy of ``model`` (as the evaluate stage runs them)."""
    return {name: run(name, model, val, cfg, score=score) for name in enabled_modes(cfg)}


class UniformModel(nn.Module):
    """Every target costs ln(V) nats, whatever the context."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(bos_id=BOS)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, ids, targets, *, looped, adapters=None, reduction="none", cu_seqlens=None):
        return torch.full(targets.shape, math.log(VOCAB), dtype=torch.float64) + 0 * self.w


def test_bpb_of_a_hand_computed_case():
    val = text_val(["ab", "東."])  # targets: a b BOS | 東 . -> 5 tokens; bytes 1 + 1 + 0 + 3 + 1 = 6
    result = run("sliding", UniformModel(), val, eval_cfg())
    assert (result.totals.tokens, result.totals.bytes) == (5, 6)
    assert result.totals.val_bpb == pytest.approx(5 * math.log(VOCAB) / (math.log(2) * 6), rel=1e-12)


def test_documents_partition_the_targets_and_score_docs_takes_a_prefix():
    val = text_val(random_texts(7, 1, 30))
    docs = split_documents(val.tokens, BOS)
    covered = np.concatenate([np.arange(d.start + 1, d.end) for d in docs])
    assert np.array_equal(covered, np.arange(1, len(val.tokens)))
    assert split_documents(val.tokens, BOS, 3) == docs[:3]
    with pytest.raises(PgolfError, match="start with BOS"):
        split_documents(val.tokens[1:], BOS)


@pytest.mark.parametrize(("seq_len", "stride"), [(8, 3), (8, 8), (24, 5), (5, 1)])
def test_sliding_scores_every_target_of_the_selected_documents_exactly_once(seq_len, stride):
    val = text_val(random_texts(6, 1, 40, seed=1))
    docs = split_documents(val.tokens, BOS, 4)
    windows = document_windows(docs, seq_len, stride)
    counts = np.zeros(len(val.tokens), dtype=int)
    for start, length, lo, hi in windows:
        assert 0 <= lo < hi <= length <= seq_len
        doc = next(d for d in docs if d.start <= start < d.end - 1)
        assert start + length <= doc.end - 1, "a window crosses its document"
        counts[start + 1 + lo : start + 1 + hi] += 1
        if lo > 0:  # a later window scores its last `stride` (or fewer) targets with full context
            assert hi - lo <= stride and length == seq_len
    expected = np.zeros_like(counts)
    expected[1 : docs[-1].end] = 1
    assert np.array_equal(counts, expected)
    cfg = eval_cfg(sliding={"seq_len": seq_len, "stride": stride})
    recorder = TokenRecorder(len(val.tokens))
    result = run("sliding", tiny_model(), val, cfg, recorder, score=score_cfg(docs=4))
    assert np.array_equal(recorder.counts, expected) and result.totals.tokens == expected.sum()


def test_every_mode_scores_the_same_targets_and_bytes_and_passes_the_bytes_audit():
    texts = random_texts(8, 1, 50, seed=2)
    val = text_val(texts)
    results = run_modes(tiny_model(), val, eval_cfg(), score=score_cfg(docs=6))
    assert list(results) == list(MODES)
    for name, result in results.items():
        assert result.totals.tokens == sum(len(t) + 1 for t in texts[:6]) - (0 if len(texts) > 6 else 1)
        audit = bytes_audit(result.totals, text_bytes(texts[:6]))
        assert audit.passed, (name, audit.message)
        assert result.passes == (3 if name == "multi_phase" else 1)  # multi-phase re-scores: 1 + 2 passes
    assert not bytes_audit(results["plain"].totals, text_bytes(texts[:5])).passed


@pytest.mark.parametrize("name", ["plain", "sliding", "lora_ttt", "chunk_sgd", "multi_phase"])
def test_score_first_audit_passes_for_compliant_modes_and_fails_for_multi_phase(name):
    val = text_val(random_texts(8, 20, 45, seed=3))
    model, cfg = tiny_model(), eval_cfg()
    doc = split_documents(val.tokens, BOS)[2]
    cut = 2 * cfg.lora_ttt.chunk_size  # the end of chunk 1

    def run_on(v, recorder):
        return run(name, model, v, cfg, recorder)

    audit = score_first_audit(run_on, val, doc, cut, VOCAB)
    assert audit.checked >= cut
    assert audit.passed == (name != "multi_phase"), audit.message


def test_the_stage_audit_says_what_it_runs(capsys):
    """The evaluate stage's score-first audit prints a line before and after each of its two runs and its verdict
    (issue 15: it ran for minutes without output)."""
    from pgolf.eval.audit import score_first

    val = text_val(random_texts(4, 20, 45, seed=3))
    detail = score_first("chunk_sgd", tiny_model(), val, score_cfg(), eval_cfg(progress=True), True)
    lines = [line for line in capsys.readouterr().out.splitlines() if "score-first audit of chunk_sgd" in line]
    assert len(lines) == 5 and "original run on 2 documents" in lines[0] and "perturbed run" in lines[2]
    assert lines[-1].endswith(f"passed ({detail['checked']} protected scores, 0 changed)")


def test_run_modes_leaves_the_model_unchanged():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_modes(model, text_val(random_texts(5, 10, 40)), eval_cfg())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="eval.sliding.stride"):
        eval_cfg(sliding={"stride": 100})
    with pytest.raises(ConfigError, match="eval.lora_ttt.phases"):
        eval_cfg(lora_ttt={"phases": [5, 3]})
    with pytest.raises(ConfigError, match="eval.lora_ttt.sites"):
        eval_cfg(lora_ttt={"sites": ["q", "x"]})
