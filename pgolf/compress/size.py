"""The size stage: the bytes of the files actually in artifacts/submission/ against the 16,000,000-byte limit.

Model bytes are model.bin's, code bytes every other file's (the code bundle); nothing is estimated. The metrics
file is written before the check fails, so an over-budget ablation with ``artifact.enforce: false`` keeps its
experiment row (a failed DVC stage records none).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from pgolf.compress import container
from pgolf.config import Section
from pgolf.errors import PgolfError

LIMIT_BYTES = 16_000_000  # the challenge's cap, decimal


class SizeConfig(Section):
    limit_bytes: int = Field(gt=0, description="decimal bytes; the challenge: 16000000")
    enforce: bool = Field(description="fail the stage over the limit (false: only report, for ablations)")


class OverBudget(PgolfError):
    """The submission is larger than the limit."""


def measure(submission_dir: Path, limit: int) -> dict:
    """Bytes per file, model/code/total, the margin and whether it fits; the largest streams of model.bin."""
    files = sorted(p for p in submission_dir.iterdir() if p.is_file())
    if not any(p.name == container.MODEL_BIN for p in files):
        raise PgolfError(f"{submission_dir}: no {container.MODEL_BIN}; run `dvc repro compress` first")
    sizes = {p.name: p.stat().st_size for p in files}
    model = sizes[container.MODEL_BIN]
    total = sum(sizes.values())
    manifest, _ = container.read(submission_dir / container.MODEL_BIN)
    streams = sorted(manifest["streams"], key=lambda s: -s["length"])
    return {
        "model_bytes": model,
        "code_bytes": total - model,
        "total_bytes": total,
        "limit_bytes": limit,
        "margin_bytes": limit - total,
        "fits": total <= limit,
        "files": sizes,
        "largest_streams": {s["name"]: s["length"] for s in streams[:5]},
    }


def check(metrics: dict, enforce: bool) -> None:
    """Raise OverBudget when the total exceeds the limit and ``enforce`` is set."""
    if metrics["fits"] or not enforce:
        return
    biggest = ", ".join(f"{name} {length:,} B" for name, length in metrics["largest_streams"].items())
    raise OverBudget(
        f"submission is {metrics['total_bytes']:,} bytes, {-metrics['margin_bytes']:,} over the "
        f"{metrics['limit_bytes']:,}-byte limit (model {metrics['model_bytes']:,} + code {metrics['code_bytes']:,}); "
        f"largest streams: {biggest}. Lower bits or clip sigmas in `quantize`, pick a stronger `compress.codec`, "
        "or set `artifact.enforce: false` to keep the row of an ablation"
    )
