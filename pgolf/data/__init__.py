"""Data: corpus sources, the CaseOps transform, the shard format and document encoding."""
