"""From the quantized tensors to the counted bytes: codecs, the per-group serializer with similarity sort, the
submission container (``model.bin``), the self-extracting code bundle, and the 16,000,000-byte size check.
"""
