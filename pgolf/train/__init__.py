"""Training: the document-packing loader, the training loop, checkpoints."""
