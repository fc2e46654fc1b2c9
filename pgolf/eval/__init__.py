"""Evaluation: bits-per-byte accounting and the validation passes (plain, sliding, test-time training)."""
