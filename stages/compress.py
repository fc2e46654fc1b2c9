"""Stage compress: artifacts/quant -> artifacts/submission/model.bin (per-group streams in a checked container);
bytes per group and per codec against the entropy bound -> metrics/compress.json.

After writing, the stage reads model.bin back and checks that every quantized tensor comes out bit-identical (the
decompression time it reports is that of this check). Both the coding and the read-back run one stream per worker
thread (``workers`` in the metrics; the bytes do not depend on it), the read-back exactly as evaluate decodes.
"""

import time
from dataclasses import dataclass
from pathlib import Path

from pgolf.cli import parse_paths, run
from pgolf.compress import submission
from pgolf.compress.container import MODEL_BIN
from pgolf.compress.pergroup import CompressConfig
from pgolf.files import write_json
from pgolf.params import load_section
from pgolf.quant import formats
from pgolf.runcard import run_card


@dataclass(frozen=True)
class Paths:
    params: Path = Path("params.yaml")
    quant: Path = Path("artifacts/quant")
    out: Path = Path("artifacts/submission")
    metrics: Path = Path("metrics/compress.json")


def compress(cfg: CompressConfig, paths: Paths, workers: int | None = None) -> dict:
    """Write model.bin into ``paths.out`` and its metrics; ``workers``: threads that code, and then read back, the
    streams (None: one per stream, up to the CPUs). Returns the metrics."""
    started = time.perf_counter()
    entries, meta = formats.load_quantized(paths.quant)
    start = time.perf_counter()
    blob, streams = submission.pack_model(entries, meta, cfg, workers)
    compress_seconds = time.perf_counter() - start
    model_bin = paths.out / MODEL_BIN
    model_bin.parent.mkdir(parents=True, exist_ok=True)
    model_bin.write_bytes(blob)
    start = time.perf_counter()
    restored, _ = submission.unpack_model(model_bin.read_bytes(), str(model_bin), workers)
    decompress_seconds = time.perf_counter() - start
    submission.check_identical(entries, restored)
    metrics = submission.stream_metrics(blob, streams)
    metrics.update(compress_seconds=round(compress_seconds, 3), decompress_seconds=round(decompress_seconds, 3),
                   workers=submission.pool_size(streams, workers), run=run_card(started))  # fmt: skip
    write_json(paths.metrics, metrics)
    return metrics


def main() -> None:
    paths = parse_paths(Paths, __doc__)
    cfg: CompressConfig = load_section("compress", paths.params)
    m = compress(cfg, paths)
    print(f"compress: model.bin {m['model_bytes']:,} B ({cfg.codec}; integers at {m['integer_ratio_to_bound']}x their "
          f"entropy bound); {m['compress_seconds']:.1f}s + {m['decompress_seconds']:.1f}s round trip")  # fmt: skip


if __name__ == "__main__":
    run(main)
