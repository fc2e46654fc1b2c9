"""pgolf.eval.ngram, the token-only n-gram tilt: table semantics by hand, own-document keys, scoring-order
lookups, the tilt against a float64 reference, its params (no key turns on a target-gated channel)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pgolf.config import ConfigError
from pgolf.eval import ngram
from pgolf.eval.ngram import NgramTiltConfig
from tests.eval.ngram_oracle import TokenNgram, online_hints
from tests.helpers.common import free_port
from tests.helpers.config import eval_cfg
from tests.helpers.eval import random_steps, tilt_case, tilt_cfg

# One document (BOS = 0) where the context (1, 2) is followed by 3, 4, 4, 3, 3, 5 at positions 3, 6, 9, 12, 15, 18.
HAND = np.array([0, 1, 2, 3, 1, 2, 4, 1, 2, 4, 1, 2, 3, 1, 2, 3, 1, 2, 5])


# Each target its own step, order 3 (context = the previous 2 tokens). Worked by hand: (1,2) has top 3 after pos 3;
# pos 6 adds 4 (count 1, ties with 3: no change); pos 9 makes 4 count 2 > 1: top 4; pos 12 ties 3 at 2 (no
# change); pos 15 makes 3 count 3 > 2: top 3. (2,4), (4,1), (2,3), (3,1) each have a single follower.
HAND_HINT = [-1, -1, -1, -1, -1, -1, 3, -1, -1, 3, 1, 2, 4, 1, 2, 4, 1, 2, 3]


HAND_CONF = [0, 0, 0, 0, 0, 0, 1, 0, 0, 1 / 2, 1, 1, 2 / 3, 1, 1, 2 / 4, 1, 1, 3 / 5]


def one_per_step(positions) -> list:
    return [(np.array([p]), np.array([0])) for p in positions]


def test_slot_constants_are_the_stated_odd_splitmix64_outputs():
    assert ngram.SLOT_CONSTANTS[:3].tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F5, 0x06C45D188009454F]
    assert (ngram.SLOT_CONSTANTS % 2 == 1).all() and np.unique(ngram.SLOT_CONSTANTS).size == 64


@pytest.mark.parametrize("hints", [ngram.precompute_hints, online_hints])
def test_hand_worked_hints_and_the_strict_exceed_tie_rule(hints):
    hint, conf = hints(HAND, one_per_step(range(1, 19)), 3)
    assert hint.tolist() == HAND_HINT
    np.testing.assert_array_equal(conf, np.array(HAND_CONF, dtype=np.float64))


def test_token_ngram_tables_by_hand():
    table = TokenNgram(3)
    keys = np.array([7, 7, 7, 9], dtype=np.uint64)
    table.update(keys[:2], np.array([5, 6]))  # 5 and 6 tie at 1: 5 came first and stays on top
    assert [a.tolist() for a in table.lookup(keys[[0, 3]])] == [[5, -1], [0.5, 0.0]]
    table.update(keys[2:], np.array([6, 1]))  # 6 now 2 > 1
    assert [a.tolist() for a in table.lookup(keys[[0, 3]])] == [[6, 1], [2 / 3, 1.0]]
    assert len(table) == 2


def test_lookups_of_a_step_come_before_its_update():
    hint, conf = ngram.precompute_hints(HAND, [(np.arange(1, 19), np.zeros(18, dtype=np.int64))], 3)
    assert (hint == -1).all() and (conf == 0).all()  # nothing is scored before the only step
    steps = [(np.arange(1, 10), np.zeros(9, np.int64)), (np.arange(10, 19), np.zeros(9, np.int64))]
    hint, conf = ngram.precompute_hints(HAND, steps, 3)
    assert hint[[12, 15, 18]].tolist() == [4, 4, 4]  # step 2 sees step 1's (1,2) counts 3:1, 4:2 only
    assert conf[[12, 15, 18]].tolist() == [2 / 3] * 3
    assert hint[[10, 13, 16]].tolist() == [1, 1, 1] and conf[16] == 1.0


@pytest.mark.parametrize("hints", [ngram.precompute_hints, online_hints])
def test_a_step_updates_in_stream_order_whatever_order_it_is_given(hints):
    # step 1 = positions 1..6 given backwards: in stream order (1,2) sees 3 then 4 (tie: 3 stays on top).
    steps = [(np.arange(6, 0, -1), np.zeros(6, np.int64)), (np.arange(7, 19), np.zeros(12, np.int64))]
    hint, conf = hints(HAND, steps, 3)
    assert (hint[9], conf[9]) == (3, 0.5)


def test_context_is_the_own_document_prefix_padded_with_the_sentinel():
    tokens = np.array([0, 5, 6, 7, 0, 8, 9, 0])  # documents at 0 and 4
    positions, starts = np.array([5, 6, 7]), np.array([4, 4, 4])
    c0, c1 = (int(c) for c in ngram.SLOT_CONSTANTS[:2])
    mask = (1 << 64) - 1
    expected = [(1 * c1) & mask, (1 * c0 ^ 9 * c1) & mask, (9 * c0 ^ 10 * c1) & mask]  # v = id + 1, sentinel 0
    assert ngram.context_keys(tokens, positions, starts, 3).tolist() == expected
    other = tokens.copy()
    other[1:4] = [1, 2, 3]  # the previous document does not enter the keys
    assert ngram.context_keys(other, positions, starts, 3).tolist() == expected
    padded = ngram.context_keys(tokens, np.array([5]), np.array([4]), 3)[0]
    full = [ngram.context_keys(np.array([t, 0, 8]), np.array([2]), np.array([0]), 3)[0] for t in range(64)]
    assert padded not in full  # the sentinel hashes differently from every token id (here 0..63)


@pytest.mark.parametrize("order, vocab", [(1, 4), (2, 4), (3, 4), (5, 3), (16, 2)])
def test_vectorized_hints_equal_the_online_loop(order, vocab):
    for seed in range(3):
        tokens, steps = random_steps(seed, vocab=vocab)
        fast, slow = ngram.precompute_hints(tokens, steps, order), online_hints(tokens, steps, order)
        assert (fast[0] >= 0).sum() > 20
        np.testing.assert_array_equal(fast[0], slow[0])
        np.testing.assert_array_equal(fast[1], slow[1])


@pytest.mark.parametrize("world", [2, 3])
def test_the_ranks_shares_of_the_hint_pass_put_together_are_the_whole(world):
    """Each rank computes the hints of the context keys that are its rank modulo the world; the shares are
    disjoint, none is empty, and their elementwise max is the one-process pass."""
    tokens, steps = random_steps(1, num_docs=60, vocab=4)
    whole = ngram.precompute_hints(tokens, steps, 3)
    shares = [ngram.precompute_hints(tokens, steps, 3, share=(rank, world)) for rank in range(world)]
    hinted = np.stack([hint >= 0 for hint, _ in shares])
    assert hinted.sum(axis=0).max() == 1 and hinted.sum(axis=1).min() > 10
    np.testing.assert_array_equal(np.max([hint for hint, _ in shares], axis=0), whole[0])
    np.testing.assert_array_equal(np.max([conf for _, conf in shares], axis=0), whole[1])


def _shared_hints_worker(rank: int, world: int, port: int, out_dir) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tokens, steps = random_steps(1, num_docs=60, vocab=4)
        hint, confidence = ngram.shared_hints(tokens, steps, 3, torch.device("cpu"))
        np.savez(out_dir / f"rank{rank}.npz", hint=hint, confidence=confidence)
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_share_the_hint_pass_and_both_get_the_whole(tmp_path):
    mp.spawn(_shared_hints_worker, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    tokens, steps = random_steps(1, num_docs=60, vocab=4)
    whole = ngram.precompute_hints(tokens, steps, 3)
    for rank in range(2):
        got = np.load(tmp_path / f"rank{rank}.npz")
        np.testing.assert_array_equal(got["hint"], whole[0])
        np.testing.assert_array_equal(got["confidence"], whole[1])


def test_context_keys_fast_path_equals_the_slot_by_slot_keys():
    tokens, steps = random_steps(0, num_docs=60, vocab=50)
    positions, doc_starts, _ = ngram.scoring_order(tokens, steps)
    for order in (2, 3, 16):
        keys = ngram.context_keys(tokens, positions, doc_starts, order)
        slow = ngram.slot_keys(tokens, positions, positions - doc_starts, order - 1)
        assert (positions - doc_starts >= order - 1).mean() > 0.3
        np.testing.assert_array_equal(keys, slow)


def test_offline_hints_equal_the_tables_when_keys_share_their_high_bits():
    # small keys: all in one high-bit bucket of the value sort, the path that re-sorts by the full key
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 7, 400).astype(np.uint64) * np.uint64(3)
    targets, step_ids = rng.integers(0, 4, 400), np.sort(rng.integers(0, 60, 400))
    hint, conf = ngram._offline_hints(keys, targets, step_ids)
    table = TokenNgram(3)
    for s in np.unique(step_ids):
        rows = step_ids == s
        expected = table.lookup(keys[rows])
        np.testing.assert_array_equal(hint[rows], expected[0])
        np.testing.assert_array_equal(conf[rows], expected[1])
        table.update(keys[rows], targets[rows])


def test_a_position_scored_twice_is_refused():
    with pytest.raises(ValueError, match="C4"):
        ngram.precompute_hints(HAND, one_per_step([1, 2, 2]), 3)


def test_tilt_boost_gates_on_hint_and_threshold():
    beta = ngram.tilt_boost(np.array([3, 3, -1, 0]), np.array([0.8, 0.79, 1.0, 1.0]), threshold=0.8, boost=2.5)
    assert beta.tolist() == [2.5, 0.0, 0.0, 2.5]


def test_params_are_checked_naming_the_key():
    with pytest.raises(ConfigError, match=r"eval\.lora_ttt\.ngram_tilt\.threshold: must be <= 1.0 \(got 1.5\)"):
        eval_cfg(lora_ttt={"ngram_tilt": {"threshold": 1.5}})
    with pytest.raises(ConfigError, match=r"eval\.lora_ttt\.ngram_tilt\.order: must be > 0 \(got 0\)"):
        eval_cfg(lora_ttt={"ngram_tilt": {"order": 0}})


def reference_tilt(log_probs: torch.Tensor, hint: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """p'(a) = p(a) e^(beta [a = h]) / sum, by brute force in float64."""
    p = log_probs.double().exp()
    weights = p.clone()
    rows = torch.nonzero(hint >= 0)[:, 0]
    weights[rows, hint[rows]] *= torch.exp(beta[rows])
    return weights / weights.sum(-1, keepdim=True)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tilted_nats_match_the_full_tilted_distribution(dtype):
    log_probs, hint, beta = tilt_case(dtype=dtype)
    ref = reference_tilt(log_probs, hint, beta)
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # float32 log-probs sum to 1 only to float32 precision
    torch.testing.assert_close(ref.sum(-1), torch.ones(len(ref), dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(ngram.tilted_distribution(log_probs, hint, beta).exp(), ref, rtol=tol, atol=tol)
    for a in range(log_probs.shape[1]):
        targets = torch.full_like(hint, a)
        nats = ngram.tilted_nats(-log_probs[:, a], log_probs.gather(1, hint.clamp(min=0)[:, None])[:, 0],
                                 targets == hint, beta)  # fmt: skip
        assert nats.dtype == torch.float64
        torch.testing.assert_close(nats, -ref[:, a].log(), rtol=tol, atol=tol)
        torch.testing.assert_close(ngram.tilt_scorer(log_probs, hint, beta, targets), nats, rtol=0, atol=0)


def test_beta_zero_leaves_the_loss_exactly_unchanged():
    log_probs, hint, _ = tilt_case(dtype=torch.float32)
    nats = -log_probs[:, 0]
    zero = torch.zeros(len(hint), dtype=torch.float64)
    for log_p_hint in (log_probs[:, 1], torch.full_like(nats, -float("inf")), torch.zeros_like(nats)):
        out = ngram.tilted_nats(nats, log_p_hint, torch.ones_like(hint, dtype=torch.bool), zero)
        assert torch.equal(out, nats.double())
    assert torch.equal(ngram.tilted_distribution(log_probs, hint, zero), log_probs.double())


def test_a_position_without_a_hint_is_never_tilted():
    log_probs, hint, _ = tilt_case()
    beta = torch.full((len(hint),), 2.0, dtype=torch.float64)  # also where hint = -1 (rows 0..2)
    targets = torch.zeros_like(hint)
    untilted = -log_probs[:3, 0]
    assert torch.equal(ngram.tilt_scorer(log_probs, hint, beta, targets)[:3], untilted)
    assert torch.equal(ngram.tilted_distribution(log_probs, hint, beta)[:3], log_probs[:3])


def test_no_key_turns_on_a_target_gated_channel():
    assert set(NgramTiltConfig.model_fields) == {"enabled", "order", "threshold", "boost"}
    for channel in ("within_boost", "word_boost", "agree_add_boost", "within_tau", "word_tau"):
        with pytest.raises(ConfigError, match=rf"eval.lora_ttt.ngram_tilt.{channel}: unknown key"):
            tilt_cfg(**{channel: 1.0})
    with pytest.raises(ConfigError, match=r"eval.lora_ttt.ngram_tilt.threshold"):
        tilt_cfg(threshold=1.5)
