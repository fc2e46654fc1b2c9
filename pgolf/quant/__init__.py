"""Quantization math: typed quantized formats, Hadamard rotation, SDClip + GPTQ, AWQ-lite group promotion, and LQER
low-rank correction.

The stages that route tensors, collect Hessians and write the artifact live elsewhere; this package holds only
pure functions of tensors and the dataclasses they produce.
"""
