"""pgolf.compress.entropy: the range coder round-trips any int8 arrays, reaches the zeroth-order entropy bound
(and goes below it with row classes), and rejects a truncated stream."""

import numpy as np
import pytest

from pgolf.compress import codecs, entropy

pytest.importorskip("constriction")  # the guards of its former file (tests/test_compress.py)
pytest.importorskip("zstandard")
hypothesis = pytest.importorskip("hypothesis")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(1, 9)), min_size=1, max_size=4), st.integers(0, 2**31),
       st.sampled_from(["none", "row_class"]), st.integers(1, 5))  # fmt: skip
def test_ans_round_trips_any_int8_arrays(shapes, seed, context, classes):
    rng = np.random.default_rng(seed)
    lo, hi = sorted(rng.integers(-128, 128, size=2))
    arrays = [rng.integers(lo, hi + 1, size=s).astype(np.int8) for s in shapes]
    arrays.append(rng.integers(lo, hi + 1, size=3).astype(np.int8))  # a 1-D tensor
    data = entropy.encode(arrays, entropy.AnsConfig(context=context, classes=classes))
    out = entropy.decode(data, [a.shape for a in arrays])
    assert all(np.array_equal(a, b) and b.dtype == np.int8 for a, b in zip(arrays, out, strict=True))


@pytest.mark.parametrize("context", ["none", "row_class"])
def test_ans_codes_a_one_symbol_alphabet_in_no_coder_words(context):
    """An all-equal group (e.g. a matrix quantized to zeros) has zero entropy: the header says the symbol (the
    range coder's categorical model refuses a one-entry distribution, found by the property test above)."""
    arrays = [np.zeros((0, 1), dtype=np.int8), np.full(3, 4, dtype=np.int8), np.full((5, 7), 4, dtype=np.int8)]
    data = entropy.encode(arrays, entropy.AnsConfig(context=context, classes=3))
    out = entropy.decode(data, [a.shape for a in arrays])
    assert all(np.array_equal(a, b) and b.dtype == np.int8 for a, b in zip(arrays, out, strict=True))
    assert len(data) < 32  # header, counts, row classes: no coder words


def test_ans_reaches_the_zeroth_order_bound_and_row_classes_go_below_it():
    rng = np.random.default_rng(0)
    width = rng.choice([0.5, 4.0], size=(600, 1))  # two row populations: a per-row context can tell them apart
    q = np.clip(np.round(rng.standard_t(6, size=(600, 400)) * width), -31, 31).astype(np.int8)
    bound = codecs.order0_entropy_bits(q) / 8
    plain = entropy.encode([q], entropy.AnsConfig(context="none", classes=1))
    assert bound <= len(plain) <= 1.002 * bound
    by_row = entropy.encode([q], entropy.AnsConfig(context="row_class", classes=2))
    assert len(by_row) < 0.9 * bound
    assert codecs.order0_entropy_bits(np.zeros(10)) == 0.0


def test_truncated_ans_stream_is_rejected():
    q = np.arange(-20, 20, dtype=np.int8).reshape(8, 5)
    data = entropy.encode([q], entropy.AnsConfig(context="none", classes=1))
    with pytest.raises(codecs.CodecError):
        entropy.decode(data[:7], [q.shape])
