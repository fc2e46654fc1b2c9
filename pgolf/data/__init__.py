"""Data: corpus sources, the CaseOps transform, the tokenizer, the shard format, document encoding and the
provenance hashes that keep validation documents out of training."""
