"""pgolf.eval.modes, every evaluation mode through the registry: BPB by hand, the same scored set and bytes in
every mode, the caller's model left as it was, config errors naming the key, the TTT modes learning within
documents, and a 2-process gloo run equal to 1 process."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from pgolf.config import ConfigError
from pgolf.eval.audit import bytes_audit, text_bytes
from pgolf.eval.modes import MODES
from tests.helpers.common import free_port
from tests.helpers.config import eval_cfg, score_cfg
from tests.helpers.eval import BOS, VOCAB, random_texts, repetitive_texts, run, run_modes, text_val, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")


class UniformModel(nn.Module):
    """Every target costs ln(V) nats, whatever the context."""

    def __init__(self):
        super().__init__()
        self.cfg = SimpleNamespace(bos_id=BOS)
        self.w = nn.Parameter(torch.zeros(1))

    def forward(self, ids, targets, *, looped, adapters=None, reduction="none", cu_seqlens=None, positions=None):
        return torch.full(targets.shape, math.log(VOCAB), dtype=torch.float64) + 0 * self.w


def test_bpb_of_a_hand_computed_case():
    val = text_val(["ab", "東."])  # targets: a b BOS | 東 . -> 5 tokens; bytes 1 + 1 + 0 + 3 + 1 = 6
    result = run("sliding", UniformModel(), val, eval_cfg())
    assert (result.totals.tokens, result.totals.bytes) == (5, 6)
    assert result.totals.val_bpb == pytest.approx(5 * math.log(VOCAB) / (math.log(2) * 6), rel=1e-12)


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


@pytest.mark.parametrize("name", ["lora_ttt", "chunk_sgd"])
def test_positive_lr_learns_within_documents_of_a_repetitive_corpus(name):
    val = text_val(repetitive_texts(6, 96, 8, seed=6))
    model = tiny_model(noise=0.1)
    fixed = run("sliding", model, val, eval_cfg()).totals.val_loss
    cfg = eval_cfg(lora_ttt={"lr": 3e-2, "chunk_size": 8}, chunk_sgd={"lr": 0.2, "chunk_tokens": 48, "epochs": 3})
    adapted = run(name, model, val, cfg).totals.val_loss
    assert adapted < fixed - 0.1, (adapted, fixed)


def _gloo_worker(rank, world_size, port, out_dir):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.set_num_threads(1)
    try:
        results = run_modes(tiny_model(), text_val(random_texts(9, 5, 70, seed=9)), _dist_cfg())
        out = {k: [r.totals.nats, r.totals.tokens, r.totals.bytes] for k, r in results.items()}
        (out_dir / f"{rank}.json").write_text(json.dumps(out))
    finally:
        dist.destroy_process_group()


def _dist_cfg():
    return eval_cfg(lora_ttt={"warm_start_a": False}, multi_phase={"enabled": False})


@pytest.mark.slow
def test_two_process_gloo_gives_the_single_process_totals(tmp_path):
    mp.spawn(_gloo_worker, args=(2, free_port(), tmp_path), nprocs=2, join=True)
    single = run_modes(tiny_model(), text_val(random_texts(9, 5, 70, seed=9)), _dist_cfg())
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert set(got) == set(single)
        for name, (nats, tokens, num_bytes) in got.items():
            want = single[name].totals
            assert (tokens, num_bytes) == (want.tokens, want.bytes), name
            assert math.isclose(nats, want.nats, rel_tol=1e-5), (name, nats, want.nats)


def test_every_mode_names_a_function_that_exists():
    """The registry names each mode's function by module path (imported when it runs): a typo fails here, not in
    the middle of an evaluation."""
    from pgolf.eval.modes import MODES

    assert all(callable(mode.run) for mode in MODES.values())
    assert MODES["lora_ttt"].run.__name__ == "evaluate_lora_ttt" and MODES["lora_ttt"].ttt
