"""What every benchmark here shares: the device named as in the results tables, and appending a table to
``bench/RESULTS.md`` (and printing it)."""

from __future__ import annotations

from pathlib import Path

import torch


def device_name(device: torch.device) -> str:
    """The GPU's name, or ``CPU (N threads)``."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


def publish(lines: list[str], results: str | Path) -> None:
    """Print ``lines`` and append them, as one block, to the results file."""
    text = "\n".join(lines) + "\n"
    print(text)
    with open(results, "a") as f:
        f.write(text)
