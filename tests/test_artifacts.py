"""pgolf.artifacts: the stored model configuration, and the one way a GPT is rebuilt from stored tensors."""

import pytest
import torch

from pgolf import artifacts
from pgolf.config import ConfigError
from pgolf.model.gpt import GPT
from tests.helpers.config import model_cfg
from tests.helpers.model import random_ids


def _residual_dtypes(model: GPT) -> set[torch.dtype]:
    """The dtypes of the blocks' outputs (the residual stream) in one forward, as the scorer runs it on CPU."""
    seen: set[torch.dtype] = set()
    hooks = [b.register_forward_hook(lambda m, i, out: seen.add(out.dtype)) for b in model.blocks]
    with torch.no_grad():
        model(random_ids(), random_ids(seed=1))
    for h in hooks:
        h.remove()
    return seen


def test_a_record_policy_model_is_rebuilt_with_its_bf16_embedding_and_residual_stream():
    """Export, the dequantized model and TTT score the model as it trained: under train.dtype_policy record the
    tied embedding is bf16 (a dequantized one rounded to bf16 on load, as the record's template), the rest fp32."""
    torch.manual_seed(0)
    cfg = model_cfg()
    state = GPT(cfg).state_dict()  # fp32 values, e.g. a dequantized state
    assert artifacts.stored_config(cfg, "fp32") == cfg.model_dump()  # fp32 runs store what they always stored
    stored = artifacts.stored_config(cfg, "record")
    assert stored == cfg.model_dump() | {"embedding_dtype": "bfloat16"}
    model = artifacts.build_model(stored, state)
    for name, p in model.named_parameters():
        embedding = name == "tok_emb.weight"
        assert p.dtype == (torch.bfloat16 if embedding else torch.float32), name
        assert torch.equal(p, state[name].to(p.dtype)), name
    assert _residual_dtypes(model) == {torch.bfloat16}
    assert _residual_dtypes(artifacts.build_model(cfg.model_dump(), state)) == {torch.float32}


def test_an_unknown_embedding_dtype_is_refused():
    with pytest.raises(ConfigError, match="embedding_dtype must be float32 or bfloat16"):
        artifacts.template(model_cfg().model_dump() | {"embedding_dtype": "float16"})
