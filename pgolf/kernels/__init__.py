"""Fused Triton kernels (MLP up-projection with LeakyReLU², softcapped cross-entropy), each behind a dispatcher
with an eager PyTorch fallback. Triton is imported only on the Triton path."""
