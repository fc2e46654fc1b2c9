"""The model: configuration, layers, layer schedule (recurrence + U-Net), the GPT, and LoRA adapters."""
