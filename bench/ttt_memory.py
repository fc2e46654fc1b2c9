"""Peak memory of one LoRA TTT chunk step (forward through the model with the batch's adapters, the loss of the
chunk's scored positions, backward) at the record's and the frontier's shapes, on CPU, eager, fp32 parameters as
the evaluate stage builds them. Each measurement runs in its own process; the figure is the step's peak resident
memory above the process's peak after building the model and adapters (``ru_maxrss``), so the model's own bytes
are not in it.

The shapes: ``record_1855``: rows = eval.lora_ttt.batch_docs (64), width = eval.lora_ttt.context (2048), chunk 48,
no n-gram tilt, the fixed soft-cap; ``frontier_2135``: width 2560, with the n-gram tilt (the model returns logits,
log-softmax in fp32, log p(hint)) and AsymLogit's learnable caps. ``--rows`` runs fewer rows (memory grows
linearly with the rows: the table scales to 64).

    python bench/ttt_memory.py --rows 8                     # this checkout
    python bench/ttt_memory.py --rows 8 --root ../old       # another checkout (94b81af or later)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

PRESETS = ("record_1855", "frontier_2135")


def _modules(root: Path):
    """(EvalForward, its extra keywords, LoRA TTT module) of the checkout at ``root``."""
    sys.path.insert(0, str(root))
    if (root / "pgolf" / "score").is_dir():
        from pgolf.eval import lora_ttt
        from pgolf.score.compile import EvalForward

        return EvalForward, {"min_rows": 0}, lora_ttt, True
    from pgolf.eval.compile import EvalForward

    from pgolf.eval import ttt_lora

    return EvalForward, {}, ttt_lora, False


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(root: Path, preset: str, rows: int) -> dict:
    import torch

    EvalForward, extra, ttt, scored_only = _modules(root)
    from pgolf.config import parse_section, read_params
    from pgolf.model.config import ModelParams
    from pgolf.model.gpt import GPT

    torch.set_num_threads(2)
    params = read_params(root / "presets" / f"{preset}.yaml")
    model_cfg = parse_section(params["model"], "model", ModelParams).resolve(vocab_size=8192, bos_id=1)
    cfg = parse_section(params["eval"]["lora_ttt"], "eval.lora_ttt", ttt.LoraTttConfig)
    torch.manual_seed(0)
    model = GPT(model_cfg)
    for p in model.parameters():
        p.requires_grad_(False)
    width, chunk, tilt = cfg.context, cfg.chunk_size, cfg.ngram_tilt.enabled
    cap = ttt.AsymSoftcap(model_cfg.logit_softcap) if cfg.asym_logit else None
    forward = EvalForward(model, True, None, max_width=width, logit_cap=cap, hints=tilt, **extra)
    lora = ttt._fresh_lora(model, cfg, rows, True, seed=0)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 8192, (rows, width), generator=g)
    full_targets = torch.randint(0, 8192, (rows, width), generator=g)
    hints_full = torch.randint(-1, 8192, (rows, width), generator=g)
    cols = torch.arange(width - chunk, width).expand(rows, chunk).contiguous()
    if scored_only:  # the head, soft-cap, tilt inputs and loss at the chunk's scored positions only
        targets, hints, kw = full_targets[:, -chunk:], hints_full[:, -chunk:], {"cols": cols}
    else:  # every position, the chunk's taken afterwards
        targets, hints, kw = full_targets, hints_full, {}
    before = _peak_mib()
    start = time.perf_counter()
    with torch.enable_grad():
        out = forward(inputs, targets, lora, hints, **kw) if tilt else forward(inputs, targets, lora, **kw)
        nats = out[0] if tilt else out
        loss = nats[:, -chunk:].float().mean()
        loss.backward()
    return {"preset": preset, "rows": rows, "width": width, "chunk": chunk, "tilt": tilt, "asym_logit": cap is not None,
            "setup_peak_mib": round(before), "step_peak_mib": round(_peak_mib() - before),
            "seconds": round(time.perf_counter() - start, 1), "loss": float(loss)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=str(Path(__file__).resolve().parents[1]), help="a pgolf checkout")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--preset", choices=PRESETS, nargs="+", default=list(PRESETS))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    root = Path(args.root).resolve()
    if args.child:
        print(json.dumps(child(root, args.preset[0], args.rows)))
        return
    for preset in args.preset:
        cmd = [sys.executable, __file__, "--child", "--root", str(root), "--rows", str(args.rows), "--preset", preset]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            print(f"{root.name} {preset}: failed\n{out.stderr[-2000:]}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        scaled = r["step_peak_mib"] * 64 / r["rows"]
        print(
            f"{root.name} {preset}: rows {r['rows']} width {r['width']}: step peak {r['step_peak_mib']:,} MiB "
            f"(x{64 // r['rows']} rows: ~{scaled / 1024:.1f} GiB at 64 rows), {r['seconds']} s, loss {r['loss']:.6f}"
        )
        print(json.dumps(r))


if __name__ == "__main__":
    main()
