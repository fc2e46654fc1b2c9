"""Training: the document-packing loader, the optimizer step, the loop, checkpoint and resume, late QAT, the
progressive context schedule, and what leaves training (``export``)."""
