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
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench._results import publish  # noqa: E402
from pgolf.compress import codecs, entropy, pergroup  # noqa: E402
from pgolf.compress.stage import CompressConfig, load_quantized  # noqa: E402
from pgolf.config import load_section  # noqa: E402
from pgolf.model.config import ModelParams  # noqa: E402
from pgolf.model.gpt import GPT  # noqa: E402
from pgolf.quant import formats  # noqa: E402
from pgolf.quant.policy import QuantizeConfig, decide  # noqa: E402
from pgolf.quant.quantize import quantize_state  # noqa: E402
from pgolf.tokenizer import TokenizerConfig  # noqa: E402

RECORD_SIMSORT = ["tok_emb.weight", "attn.q.weight", "mlp.up.weight"]


def synthetic_entries(preset: Path, seed: int) -> list[formats.Entry]:
    tok = load_section("tokenizer", TokenizerConfig, preset)
    model = GPT(load_section("model", ModelParams, preset).resolve(tok.vocab_size, tok.special_ids.bos))
    qcfg = load_section("quantize", QuantizeConfig, preset)
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
        (streams, _), seconds = timed(lambda c=cfg: pergroup.serialize(entries, c))
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quant", default="artifacts/quant", help="a quantize stage output")
    parser.add_argument("--synthetic", type=Path, help="a preset: synthesize its shapes instead of --quant")
    parser.add_argument("--params", default="params.yaml", help="compress section for codec settings")
    parser.add_argument("--no-lrzip", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    args = parser.parse_args()
    base = load_section("compress", CompressConfig, args.params)
    base = base.model_copy(update={"lrzip": codecs.LrzipConfig(level=9, threads=1, zpaq=True)})
    if args.synthetic:
        entries, source = synthetic_entries(args.synthetic, args.seed), f"synthetic {args.synthetic.name} shapes"
    else:
        entries, source = load_quantized(Path(args.quant))[0], args.quant
    have_lrzip = not args.no_lrzip and codecs.shutil.which("lrzip") is not None
    rows, bound = run(entries, base, have_lrzip)
    symbols = sum(e.fmt.q.numel() for e in entries if isinstance(e.fmt, formats.QuantizedMatrix))
    lines = [f"## {datetime.date.today()} compress: {source} (CPU, {torch.get_num_threads()} threads)", "",
             f"`{' '.join(['python bench/compress.py', *sys.argv[1:]])}`  ",
             f"{symbols:,} integer symbols; zeroth-order bound of the groups {bound:,.0f} B", "",
             "| coder | total bytes | integer bytes / bound | seconds |", "|---|---:|---:|---:|"]  # fmt: skip
    for label, total, ratio, seconds in rows:
        lines.append(f"| {label} | {total:,} | {'' if ratio is None else f'{ratio:.4f}'} | {seconds:.1f} |")
    publish(["", *lines], args.results)


if __name__ == "__main__":
    main()
