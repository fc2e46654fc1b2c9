"""The one bit-width range of every quantized integer grid: stored in int8, so 2 to 8 bits (c = 2^(bits-1) - 1
levels each side of 0). GPTQ, RTN, LQER's factors, AWQ-lite's fine grid and late QAT's fake quantizer all check
against it, and params.yaml's bit keys are validated with it when they load (:data:`BitWidth`)."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

MIN_BITS, MAX_BITS = 2, 8


def check_bits(bits: int, what: str) -> int:
    """``bits`` when it is a grid int8 can store (:data:`MIN_BITS` to :data:`MAX_BITS`), else ValueError."""
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"{what}: bits must be in [{MIN_BITS}, {MAX_BITS}] (stored in int8), got {bits}")
    return bits


def _bit_width(bits: int) -> int:
    if not MIN_BITS <= bits <= MAX_BITS:
        raise PydanticCustomError("bit_width", f"must be between {MIN_BITS} and {MAX_BITS}")
    return bits


BitWidth = Annotated[int, AfterValidator(_bit_width)]
"""A params key holding a bit width: checked when params.yaml is loaded, with the key in the message."""
