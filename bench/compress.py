"""Compression of one quantized model by every coder: bytes, ratio to the entropy bound, seconds.

    python bench/compress.py                                  # artifacts/quant of the embedded default
    python bench/compress.py --synthetic presets/record_1855.yaml   # the record's shapes, realistic weights

Per-group variants go through the real serializer (:mod:`pgolf.compress.pergroup`): integer groups by role, with
lrzip (the record: ZPAQ -L 9, simsort on tok_emb / q / mlp.up, column order), the range-ANS coder (order 0, and
per row class), and brotli-11 on the same column-ordered groups. Whole-blob variants compress the concatenated
raw bytes of every quantized tensor in one call (the record's other compressors and the #1851 lineage's
byte-shuffle + brotli). The bound is the zeroth-order entropy of the integer symbols of each group, summed; the
rest (scales, LQER factors, gates, passthrough) has no bound and is in every total.

``--synthetic`` builds the preset's model, draws every quantized matrix as Student-t(6) rows with log-normal row
scales (weights of trained GPTs are heavy-tailed with row-dependent widths) and quantizes them with the preset's
policy (SDClip scales; identity Hessians, so GPTQ reduces to round-to-nearest on the SDClip grid), LQER included.

A second table times model.bin's packing and read-back (the compress stage's two steps; the read-back is also the
evaluate stage's decompression) with the streams coded one after another (1 worker) and one per worker thread
(:mod:`pgolf.compress.parallel`, one per stream up to the CPUs), checks that both give the same file, and lists the
slowest single stream of the serial run: the parallel time cannot go below it. With ``--repeats N`` each side is
timed N times, alternating, and the best time is kept (on a shared machine the load comes and goes). The first
table codes one stream after another, as its earlier rows did; ``--parallel-only`` skips it.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import publish  # noqa: E402
from pgolf.compress import codecs, entropy, parallel, pergroup, submission  # noqa: E402
from pgolf.compress.pergroup import CompressConfig  # noqa: E402
from pgolf.compress.submission import check_identical  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.params import load_section  # noqa: E402
from pgolf.quant import formats  # noqa: E402
from pgolf.quant.formats import load_quantized  # noqa: E402
from pgolf.quant.policy import decide  # noqa: E402
from pgolf.quant.quantize import quantize_state  # noqa: E402

RECORD_SIMSORT = ["tok_emb.weight", "attn.q.weight", "mlp.up.weight"]


def synthetic_entries(preset: Path, seed: int) -> list[formats.Entry]:
    tok = load_section("tokenizer", preset)
    model = GPT(load_section("model", preset).resolve(tok.vocab_size, tok.special_ids.bos))
    qcfg = load_section("quantize", preset)
    decisions = decide(model, qcfg)
    torch.manual_seed(seed)
    student_t = torch.distributions.StudentT(6.0)
    state, hessians = {}, {}
    for name, p in model.state_dict().items():
        if decisions[name].spec is None:
            state[name] = p.detach().float()
            continue
        row = torch.exp(0.25 * torch.randn(p.shape[0], 1))
        state[name] = (0.02 * row * student_t.sample(p.shape)).float()
        hessians[name] = torch.eye(p.shape[1])
    entries, _, _ = quantize_state(state, hessians, decisions, qcfg)
    return entries


def whole_blob(entries: list[formats.Entry]) -> bytes:
    tensors, _ = formats.to_tensors(entries)
    return b"".join(pergroup._tensor_bytes(t) for t in tensors.values())


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run(entries: list[formats.Entry], base: CompressConfig, lrzip: bool) -> tuple[list[tuple], float]:
    variants = {
        "per-group ans (order 0)": dict(codec="ans", simsort=[], ans=entropy.AnsConfig(context="none", classes=8)),
        "per-group ans (row classes)": dict(
            codec="ans", simsort=[], ans=entropy.AnsConfig(context="row_class", classes=8)
        ),
        "per-group brotli-11": dict(codec="brotli", simsort=RECORD_SIMSORT),
    }
    if lrzip:
        variants["per-group lrzip -z -L9 (record)"] = dict(codec="lrzip", simsort=RECORD_SIMSORT)
    rows = []
    group_bound = None
    for label, change in variants.items():
        cfg = base.model_copy(update=dict(grouping="role", transpose=True, **change))
        (streams, _), seconds = timed(lambda c=cfg: pergroup.serialize(entries, c, workers=1))
        group_bound = sum(s.entropy_bits for s in streams if s.entropy_bits is not None) / 8
        total = sum(len(s.data) for s in streams)
        ints_bytes = sum(len(s.data) for s in streams if s.entropy_bits is not None)
        rows.append((label, total, ints_bytes / group_bound, seconds))
    blob = whole_blob(entries)
    blob_codecs = {
        "whole-blob brotli-11": (codecs.Brotli(codecs.BrotliConfig(quality=11, lgwin=24)), 0),
        "whole-blob byte-shuffle(2) + brotli-11": (codecs.Brotli(codecs.BrotliConfig(quality=11, lgwin=24)), 2),
        "whole-blob lzma-9e": (codecs.Lzma(codecs.LzmaConfig(preset=9, extreme=True)), 0),
        "whole-blob zstd-22": (codecs.Zstd(codecs.ZstdConfig(level=22)), 0),
    }
    for label, (codec, stride) in blob_codecs.items():
        data, seconds = timed(lambda c=codec, s=stride: c.compress(codecs.shuffle(blob, s)))
        rows.append((label, len(data), None, seconds))
    return rows, group_bound or 0.0


def _pack_and_read(entries: list[formats.Entry], meta: dict, cfg: CompressConfig, workers: int | None
                   ) -> tuple[bytes, list[pergroup.Stream], float, float]:  # fmt: skip
    """model.bin's bytes and streams, the seconds to pack it and to read it back (every tensor checked)."""
    (blob, streams), pack = timed(lambda: submission.pack_model(entries, meta, cfg, workers))
    (restored, _), read = timed(lambda: submission.unpack_model(blob, workers=workers))
    check_identical(entries, restored)
    return blob, streams, pack, read


def serial_vs_parallel(entries: list[formats.Entry], base: CompressConfig, names: list[str], repeats: int
                       ) -> list[tuple]:  # fmt: skip
    """Per codec: streams, workers, then the best of ``repeats`` pack and read-back seconds at 1 worker and in the
    pool (the two alternate, so a load that comes and goes hits both), and the slowest serial stream; raises if the
    two model.bin files differ."""
    _, manifest = formats.to_tensors(entries)
    meta = {"formats": manifest, "model_config": {}, "train": {"looping_from_step": None}}
    rows = []
    for name in names:
        simsort = [] if name == "ans" else RECORD_SIMSORT
        cfg = base.model_copy(update=dict(codec=name, grouping="role", transpose=True, simsort=simsort))
        best = {1: [float("inf")] * 2, None: [float("inf")] * 2}
        blobs = {}
        for _ in range(repeats):
            for workers in best:
                blobs[workers], streams, pack, read = _pack_and_read(entries, meta, cfg, workers)
                best[workers] = [min(best[workers][0], pack), min(best[workers][1], read)]
                if workers == 1:
                    slowest = max(streams, key=lambda s: s.seconds)
            if blobs[None] != blobs[1]:
                raise RuntimeError(f"{name}: model.bin coded in parallel differs from the serial one")
        workers = parallel.default_workers(sum(s.name != "perms" for s in streams))
        rows.append((name, len(streams), workers, best[1][0], best[None][0], best[1][1], best[None][1], slowest))
    return rows


def parallel_lines(rows: list[tuple]) -> list[str]:
    head = ["codec", "streams", "workers", "pack 1 worker s", "pack pool s", "ratio", "read-back 1 worker s",
            "read-back pool s", "ratio", "slowest serial stream"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * 8 + "---|"]
    for name, count, workers, pack_1, pack_n, read_1, read_n, slowest in rows:
        cells = [name, count, workers, f"{pack_1:.1f}", f"{pack_n:.1f}", f"{pack_1 / pack_n:.2f}", f"{read_1:.1f}",
                 f"{read_n:.1f}", f"{read_1 / read_n:.2f}", f"{slowest.name} {slowest.seconds:.1f} s"]  # fmt: skip
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="artifacts/quant", help="a quantize stage output")
    parser.add_argument("--synthetic", type=Path, help="a preset: synthesize its shapes instead of --quant")
    parser.add_argument("--params", default="params.yaml", help="compress section for codec settings")
    parser.add_argument("--no-lrzip", action="store_true")
    parser.add_argument("--parallel-only", action="store_true", help="only the serial vs parallel table")
    parser.add_argument("--parallel-codecs", default="lrzip,brotli,ans", help="codecs of that table")
    parser.add_argument("--repeats", type=int, default=1, help="that table: best of N alternating runs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    base = load_section("compress", args.params)
    base = base.model_copy(update={"lrzip": codecs.LrzipConfig(level=9, threads=1, zpaq=True)})
    if args.synthetic:
        entries, source = synthetic_entries(args.synthetic, args.seed), f"synthetic {args.synthetic.name} shapes"
    else:
        entries, source = load_quantized(Path(args.quant))[0], args.quant
    have_lrzip = not args.no_lrzip and codecs.shutil.which("lrzip") is not None
    symbols = sum(e.fmt.q.numel() for e in entries if isinstance(e.fmt, formats.QuantizedMatrix))
    machine = f"CPU, {torch.get_num_threads()} threads, {parallel.available_cpus()} CPUs"
    command = " ".join(["python bench/compress.py", *sys.argv[1:]])
    lines = [f"## {datetime.date.today()} compress: {source} ({machine})", "", f"`{command}`  "]
    if not args.parallel_only:
        rows, bound = run(entries, base, have_lrzip)
        lines += [f"{symbols:,} integer symbols; zeroth-order bound of the groups {bound:,.0f} B", "",
                  "| coder | total bytes | integer bytes / bound | seconds |", "|---|---:|---:|---:|"]  # fmt: skip
        for label, total, ratio, seconds in rows:
            lines.append(f"| {label} | {total:,} | {'' if ratio is None else f'{ratio:.4f}'} | {seconds:.1f} |")
        lines.append("")
    names = [n for n in args.parallel_codecs.split(",") if n and (n != "lrzip" or have_lrzip)]
    if names:
        load = os.getloadavg()[0]
        timings = serial_vs_parallel(entries, base, names, args.repeats)
        lines += [f"model.bin packed and read back by 1 worker and by the pool ({symbols:,} integer symbols; the same "
                  f"file, every tensor checked; best of {args.repeats}; 1-minute load average {load:.2f} before, "
                  f"{os.getloadavg()[0]:.2f} after):", "", *parallel_lines(timings)]  # fmt: skip
    publish(["", *lines], args.results)


if __name__ == "__main__":
    main()
