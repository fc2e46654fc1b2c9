"""CaseOps v1: a lossless case transform, so the tokenizer sees lower-case words plus case operators.

Only maximal runs of ASCII letters ("words") change; every other character is copied. Four private-use
characters act as operators and are reserved as single tokens by the tokenizer:

=========  ======  ====================================================
TITLE      U+E001  upper-case the first letter of the next word
ALLCAPS    U+E002  upper-case every letter of the next word
CAPNEXT    U+E003  upper-case the next letter (inside a word)
ESC        U+E004  the next character is a literal operator character
=========  ======  ====================================================

Encoding: a lower-case word is copied; an all-caps word of length >= 2 becomes ALLCAPS + lower; a title word
(upper then >= 1 lower) becomes TITLE + lower; any other word is "mixed": TITLE if its first letter is upper, then
each letter lower-cased with CAPNEXT before every later upper-case letter (so "A" -> TITLE "a"). A literal operator
character ``c`` in the input becomes ESC ``c``. ``decode(encode(s)) == s`` for every string ``s``; ``decode`` rejects
text that no ``encode`` produces (markers before a non-letter, inside a word, dangling at the end).

The byte weights of :func:`original_byte_weights` say how many *original* UTF-8 bytes each byte of the
transformed text stands for (operators 0, everything else 1), which is what the validation byte sidecar sums.

References: the record's ``lossless_caps.py`` (``lossless_caps_caseops_v1``), PR #1855.
"""

from __future__ import annotations

import re

import numpy as np

from pgolf.errors import PgolfError

TITLE, ALLCAPS, CAPNEXT, ESC = "\ue001", "\ue002", "\ue003", "\ue004"
OPERATORS = (TITLE, ALLCAPS, CAPNEXT, ESC)

_WORD_OR_OPERATOR = re.compile("[A-Za-z]+|[\ue001-\ue004]")
# In UTF-8 each operator is EE 80 81..84. ESC + literal: only ESC's three bytes weigh zero.
_ZERO_WEIGHT = re.compile(rb"(\xee\x80\x84)\xee\x80[\x81-\x84]|(\xee\x80[\x81-\x84])")


class CaseOpsError(PgolfError, ValueError):
    """Text that is not a valid CaseOps encoding."""


def _encode_word(word: str) -> str:
    if word in OPERATORS:
        return ESC + word
    if word.islower():
        return word
    lower = word.lower()
    if len(word) >= 2 and word.isupper():
        return ALLCAPS + lower
    if len(word) >= 2 and word[0].isupper() and word[1:].islower():
        return TITLE + lower
    parts = [TITLE] if word[0].isupper() else []
    parts.append(lower[0])
    for ch, low in zip(word[1:], lower[1:], strict=True):
        if ch.isupper():
            parts.append(CAPNEXT)
        parts.append(low)
    return "".join(parts)


def encode(text: str) -> str:
    """Apply the CaseOps transform."""
    return _WORD_OR_OPERATOR.sub(lambda m: _encode_word(m.group()), text)


def _is_ascii_letter(ch: str) -> bool:
    return ("a" <= ch <= "z") or ("A" <= ch <= "Z")


def decode(text: str) -> str:
    """Invert :func:`encode`; raises :class:`CaseOpsError` on text that no encoding produces."""
    out: list[str] = []
    word_mode = ""  # TITLE or ALLCAPS waiting for the next word start
    capnext = escape = in_word = allcaps = False
    for pos, ch in enumerate(text):
        if escape:
            if ch not in OPERATORS:
                raise CaseOpsError(f"position {pos}: ESC must precede an operator character, got {ch!r}")
            out.append(ch)
            escape = False
        elif ch == ESC:
            if word_mode or capnext:
                raise CaseOpsError(f"position {pos}: case marker followed by ESC")
            escape, in_word, allcaps = True, False, False
        elif ch in (TITLE, ALLCAPS):
            if in_word or word_mode or capnext:
                raise CaseOpsError(f"position {pos}: word marker inside a word or after another marker")
            word_mode = ch
        elif ch == CAPNEXT:
            if capnext or not in_word or allcaps:
                raise CaseOpsError(f"position {pos}: CAPNEXT outside a mixed-case word or repeated")
            capnext = True
        elif _is_ascii_letter(ch):
            if not in_word:
                in_word, allcaps = True, word_mode == ALLCAPS
                upper = bool(word_mode)
                word_mode = ""
            else:
                upper = allcaps or capnext
            capnext = False
            out.append(ch.upper() if upper else ch)
        else:
            if word_mode or capnext:
                raise CaseOpsError(f"position {pos}: case marker followed by non-letter {ch!r}")
            in_word = allcaps = False
            out.append(ch)
    if word_mode or capnext or escape:
        raise CaseOpsError("dangling marker at the end of the text")
    return "".join(out)


def original_byte_weights(transformed: bytes) -> np.ndarray:
    """Per byte of UTF-8 ``transformed`` text: 1 if it is a byte of the original text, 0 for operator bytes.

    The weights sum to ``len(decode(text).encode())``.
    """
    weights = np.ones(len(transformed), dtype=np.int64)
    for m in _ZERO_WEIGHT.finditer(transformed):
        start, end = m.span(1) if m.group(1) is not None else m.span(2)
        weights[start:end] = 0
    return weights
