"""Quantization: the bit-width range, typed quantized formats with one dequantizer, Hadamard rotation, SDClip +
GPTQ/RTN, AWQ-lite group promotion, LQER low-rank correction, the role -> format policy, Hessian collection for
calibration, and ``quantize_state`` (every tensor of a model into its format). The stages ``calibrate`` and
``quantize`` do the file work."""
