"""pgolf.score.scorer: the scored documents (a prefix), the document set's name, fp32 arithmetic for every rung,
the caller's model left as it was."""

from __future__ import annotations

import copy

import pytest
import torch

from pgolf.score.bpb import ValData
from pgolf.score.documents import split_documents
from pgolf.score.scorer import document_set, fp32_model, score_model, scored_documents
from pgolf.score.scores import EvalContext
from tests.helpers.config import score_cfg
from tests.helpers.eval import random_texts, text_val, tiny_model
from tests.helpers.score import BOS, DYADIC, score, synthetic_val


def test_docs_takes_a_prefix_of_the_documents():
    val = synthetic_val(seed=4)
    docs = split_documents(val.tokens, BOS)
    part = score(DYADIC, val, docs=5)
    assert part.tokens == sum(d.num_targets for d in docs[:5]) < len(val.tokens) - 1


def test_document_set_names_the_scored_tokens_and_bytes():
    val = synthetic_val(seed=5)
    docs = split_documents(val.tokens, BOS)
    named = document_set(val, docs[:4])
    assert named["count"] == 4 and named["targets"] == sum(d.num_targets for d in docs[:4])
    assert named["bytes"] == int(val.target_bytes[1 : docs[3].end].sum())
    assert document_set(val, docs[:4]) == named and document_set(val, docs[:5])["sha256"] != named["sha256"]
    changed = ValData(val.tokens, val.target_bytes.copy(), val.byte_count)
    changed.target_bytes[2] += 1
    assert document_set(changed, docs[:4])["sha256"] != named["sha256"]


SCORE = score_cfg(docs=0, seq_len=24, batch_windows=4)


def _score(model, val):
    return score_model(model, val, scored_documents(val, SCORE, BOS), SCORE, EvalContext(True)).totals


@pytest.mark.usefixtures("one_thread")
def test_a_bf16_model_is_scored_in_fp32_arithmetic_on_its_rounded_values():
    val = text_val(random_texts(5, 10, 40, seed=11))
    model = tiny_model()
    half = copy.deepcopy(model)
    half.tok_emb.weight.data = half.tok_emb.weight.data.to(torch.bfloat16)  # as export casts the embedding
    rounded = copy.deepcopy(model)
    rounded.tok_emb.weight.data = rounded.tok_emb.weight.data.to(torch.bfloat16).float()
    assert _score(half, val) == _score(rounded, val)  # the same values in the same arithmetic: the same bits
    assert _score(half, val) != _score(model, val)  # the rounding itself is a real change of the weights
    assert half.tok_emb.weight.dtype == torch.bfloat16 and fp32_model(model) is model


@pytest.mark.usefixtures("one_thread")
def test_scoring_leaves_the_live_model_as_it_was():
    val = text_val(random_texts(4, 10, 40, seed=12))
    model = tiny_model().train()
    model.blocks[0].attn.q.weight.requires_grad_(False)
    flags = [p.requires_grad for p in model.parameters()]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _score(model, val)
    assert model.training and [p.requires_grad for p in model.parameters()] == flags
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
