"""pgolf.model.lora: zero adapters change no logit; non-zero ones do, until reset."""

import torch

from pgolf.model.lora import BatchedLoRA
from tests.helpers.config import model_cfg
from tests.helpers.model import perturbed


def test_zero_adapters_give_identical_logits():
    cfg = model_cfg()
    model = perturbed(cfg)
    schedule = model.schedule(True)
    lora = BatchedLoRA(cfg, sites=["q", "k", "v", "o", "mlp", "head"], num_slots=len(schedule.order), batch=2,
                       rank=3, alpha=6.0).to(torch.float64)  # fmt: skip
    ids = torch.randint(2, 64, (2, 10))
    torch.testing.assert_close(model(ids, looped=True, adapters=lora), model(ids, looped=True), rtol=0, atol=0)
    with torch.no_grad():
        for b in lora.B.values():
            b.normal_()
    assert not torch.allclose(model(ids, looped=True, adapters=lora), model(ids, looped=True))
    lora.reset(reset_a=False)
    torch.testing.assert_close(model(ids, looped=True, adapters=lora), model(ids, looped=True), rtol=0, atol=0)
