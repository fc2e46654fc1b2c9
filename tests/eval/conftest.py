"""Fixtures of the evaluation tests."""

import pytest

from tests.helpers.eval import repetitive_texts


@pytest.fixture(scope="module")
def texts():
    """Five documents of 45 characters repeating a 5-character pattern (the n-gram tilt's hints are right)."""
    return repetitive_texts(5, 45, 5, seed=1)
