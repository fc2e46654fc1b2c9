"""pgolf.quant.awq (AWQ-lite, #1908): group scores and selection by hand, and a lower H-weighted error with the
protected group on the finer grid."""

import pytest
import torch

from pgolf.quant import awq, formats, gptq, lqer
from tests.helpers.quant import gen, outlier_inputs


def test_activation_rms_and_group_scores_by_hand():
    h = torch.diag(torch.tensor([4.0, 16.0, 36.0, 64.0, 100.0]))
    rms = awq.activation_rms(h, 4)
    assert rms.dtype == torch.float64 and rms.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    w = torch.tensor([[1.0, -2.0, 0.0, 4.0, 9.0], [-3.0, 0.0, 2.0, 0.0, 9.0]])  # mean |W| by column: 2 1 1 2 9
    # groups of 2: [1*2 + 2*1, 3*1 + 4*2] = [4, 11]; the fifth column is a partial group, never scored
    assert awq.group_scores(w, rms, 2).tolist() == [4.0, 11.0]
    assert awq.group_scores(w, rms, 5).tolist() == [2 + 2 + 3 + 8 + 45.0]
    assert awq.group_scores(w, rms, 6).tolist() == []


def test_global_and_per_matrix_selection_with_ties():
    scores = {"a": torch.tensor([3.0, 1.0, 5.0]), "b": torch.tensor([5.0, 2.0]), "c": torch.tensor([1.0, 1.0])}
    pick = lambda k, scope: [(g.name, g.index, g.score) for g in awq.select_groups(scores, k, scope)]  # noqa: E731
    # global: one pool; the tie at 5 goes to the earlier tensor in state order
    assert pick(1, "global") == [("a", 2, 5.0)]
    assert pick(2, "global") == [("a", 2, 5.0), ("b", 0, 5.0)]
    assert pick(3, "global") == [("a", 2, 5.0), ("b", 0, 5.0), ("a", 0, 3.0)]
    # per_matrix: the top k of each candidate; c's tie goes to its lower group; k beyond a matrix's groups keeps all
    assert pick(1, "per_matrix") == [("a", 2, 5.0), ("b", 0, 5.0), ("c", 0, 1.0)]
    assert pick(3, "per_matrix")[3:] == [("b", 0, 5.0), ("b", 1, 2.0), ("c", 0, 1.0), ("c", 1, 1.0)]
    starts = awq.starts_by_tensor(awq.select_groups(scores, 2, "per_matrix"), 64)
    assert starts == {"a": (0, 128), "b": (0, 64), "c": (0, 64)}
    with pytest.raises(ValueError, match="top_k"):
        awq.select_groups(scores, 0, "global")


def test_awq_lowers_the_hessian_weighted_error():
    w = torch.randn(32, 256, generator=gen(5))
    h = outlier_inputs()
    s = gptq.sdclip_scales(w, 11.5, 6)
    scores = awq.group_scores(w, awq.activation_rms(h, 1), 64)
    (chosen,) = awq.select_groups({"w": scores}, 1, "global")
    assert chosen.index == 1  # the group of the loud columns 70-79
    p = formats.ProtectedGroups((64,), 64, gptq.sdclip_scales(w, 11.5, 8), 8)
    plain = formats.QuantizedMatrix(q=gptq.gptq_quantize(w, h, s, 6), scale=s, bits=6, rotated=False)
    fine = formats.QuantizedMatrix(q=gptq.gptq_quantize(w, h, s, 6, protected=p), scale=s, bits=6, rotated=False,
                                   protected=p)  # fmt: skip
    err_plain = gptq.hessian_error(lqer.quantization_residual(w, plain), h)
    err_fine = gptq.hessian_error(lqer.quantization_residual(w, fine), h)
    assert err_fine < 0.8 * err_plain, (err_fine, err_plain)
    # the protected columns still feed their error forward: the other columns' codes move too
    assert not torch.equal(fine.q[:, 128:], plain.q[:, 128:])
