"""CaseOps: a bijection onto its image on arbitrary text, the documented examples, strict decoding, weights."""

import pytest

from pgolf.data import caseops
from pgolf.data.caseops import ALLCAPS, CAPNEXT, ESC, TITLE

hypothesis = pytest.importorskip("hypothesis")
given, settings, st = hypothesis.given, hypothesis.settings, hypothesis.strategies

# Text biased towards what matters: ASCII letters of both cases, the operator characters, other Unicode.
ALPHABET = st.sampled_from(list("aAbBzZ") + list(caseops.OPERATORS) + [" ", "'", "1", "é", "É", "ß", "😀", "\n"])
TEXT = st.one_of(
    st.text(),
    st.text(alphabet=ALPHABET),
    st.lists(st.sampled_from(["NASA", "Title", "iPhone", "McD", "A", "a", TITLE, ESC, " ", "x"])).map("".join),
)


@given(TEXT)
@settings(max_examples=600, deadline=None)
def test_decode_inverts_encode(text):
    assert caseops.decode(caseops.encode(text)) == text


@given(TEXT, TEXT)
@settings(max_examples=300, deadline=None)
def test_encode_is_injective(a, b):
    if a != b:
        assert caseops.encode(a) != caseops.encode(b)


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_encoded_words_are_lowercase_and_weights_count_original_bytes(text):
    encoded = caseops.encode(text)
    assert not any("A" <= ch <= "Z" for ch in encoded)
    assert caseops.original_byte_weights(encoded.encode()).sum() == len(text.encode())


@pytest.mark.parametrize(
    ("text", "encoded"),
    [
        ("The NASA Launch", f"{TITLE}the {ALLCAPS}nasa {TITLE}launch"),
        ("iPhone OpenAI", f"i{CAPNEXT}phone {TITLE}open{CAPNEXT}a{CAPNEXT}i"),
        ("McDonald's", f"{TITLE}mc{CAPNEXT}donald's"),
        ("A", f"{TITLE}a"),
        ("É café", "É café"),
        (f"x{TITLE}y", f"x{ESC}{TITLE}y"),
    ],
)
def test_reference_examples(text, encoded):
    assert caseops.encode(text) == encoded


@pytest.mark.parametrize(
    "bad",
    [
        f"{TITLE} a",
        f"a{TITLE}b",
        f"{TITLE}",
        f"a{CAPNEXT}",
        f"a{CAPNEXT}{CAPNEXT}b",
        f"{ESC}a",
        f"{ALLCAPS}a{CAPNEXT}b",
        f"{CAPNEXT}a",
        ESC,
    ],
)
def test_decode_rejects_invalid_encodings(bad):
    with pytest.raises(caseops.CaseOpsError):
        caseops.decode(bad)


def test_escaped_literal_weighs_its_bytes():
    encoded = caseops.encode(f"a{ESC}b").encode()
    weights = caseops.original_byte_weights(encoded)
    assert weights.tolist() == [1, 0, 0, 0, 1, 1, 1, 1]
