"""One LoRA TTT chunk step at a preset's shapes, built as the evaluate stage builds it: the model (fp32 parameters,
frozen, ``eval()``), :class:`pgolf.score.compile.EvalForward` with the preset's logit cap (AsymLogit's learnable
caps when ``eval.lora_ttt.asym_logit``) and n-gram hints (``eval.lora_ttt.ngram_tilt``), fresh adapters for
``rows`` documents, and random tokens at ``rows`` x ``eval.lora_ttt.context``, whose last ``chunk_size``
positions are the chunk's scored ones (``cols``). Shared by bench/ttt_memory.py (CPU, eager, peak resident memory)
and bench/gpu_checks.py (CUDA, compiled, compile seconds and peak device memory).

Checkouts before the ``pgolf/score`` split (94b81af and later) are supported for ttt_memory's ``--root``: there the
forward computes every position and the chunk's are taken afterwards.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import torch

PRESETS = ("record_1855", "frontier_2135")


def _modules(root: Path):
    """(EvalForward, its extra keywords, the LoRA TTT module, whether the forward takes ``cols``) of ``root``."""
    sys.path.insert(0, str(root))
    if (root / "pgolf" / "score").is_dir():
        from pgolf.eval import lora_ttt
        from pgolf.score.compile import EvalForward

        return EvalForward, {"min_rows": 0}, lora_ttt, True
    from pgolf.eval.compile import EvalForward

    from pgolf.eval import ttt_lora

    return EvalForward, {}, ttt_lora, False


@dataclass
class TttChunk:
    """The built step: call :meth:`loss` (forward + the chunk's mean nats) then backward, as one chunk step."""

    forward: object
    lora: torch.nn.Module
    inputs: torch.Tensor
    targets: torch.Tensor
    hints: torch.Tensor
    kwargs: dict
    chunk: int
    tilt: bool
    cfg: object
    """The preset's ``eval.lora_ttt`` section."""
    describe: dict
    """preset, rows, width, chunk, tilt, asym_logit (for the results)."""

    def loss(self) -> torch.Tensor:
        with torch.enable_grad():
            if self.tilt:
                nats = self.forward(self.inputs, self.targets, self.lora, self.hints, **self.kwargs)[0]
            else:
                nats = self.forward(self.inputs, self.targets, self.lora, **self.kwargs)
            return nats[:, -self.chunk :].float().mean()

    def optimizer(self) -> torch.optim.AdamW:
        """The adapters' AdamW as a document batch gets it (the learning rate does not change the step's cost)."""
        cfg = self.cfg
        return torch.optim.AdamW(self.lora.parameters(), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps,
                                 weight_decay=cfg.weight_decay)  # fmt: skip

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> float:
        """Forward, backward and (with ``optimizer``) the adapters' step; returns the loss."""
        loss = self.loss()
        loss.backward()
        if optimizer is not None:
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())


def build(root: Path, preset: str, rows: int, device: torch.device, backend: str | None = None) -> TttChunk:
    """The chunk step of ``root``'s ``presets/<preset>.yaml`` at ``rows`` documents on ``device``; ``backend``
    compiles the forward as ``eval.compile`` does (None: eager)."""
    EvalForward, extra, ttt, scored_only = _modules(root)
    from pgolf.config import parse_section, read_params
    from pgolf.model.config import ModelParams
    from pgolf.model.gpt import GPT

    params = read_params(root / "presets" / f"{preset}.yaml")
    model_cfg = parse_section(params["model"], "model", ModelParams).resolve(vocab_size=8192, bos_id=1)
    cfg = parse_section(params["eval"]["lora_ttt"], "eval.lora_ttt", ttt.LoraTttConfig)
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    width, chunk, tilt = cfg.context, cfg.chunk_size, cfg.ngram_tilt.enabled
    cap = ttt.AsymSoftcap(model_cfg.logit_softcap).to(device) if cfg.asym_logit else None
    forward = EvalForward(model, True, backend, max_width=width, logit_cap=cap, hints=tilt, **extra)
    lora = ttt._fresh_lora(model, cfg, rows, True, seed=0)
    g = torch.Generator().manual_seed(1)
    inputs = torch.randint(0, 8192, (rows, width), generator=g)
    full_targets = torch.randint(0, 8192, (rows, width), generator=g)
    hints_full = torch.randint(-1, 8192, (rows, width), generator=g)
    cols = torch.arange(width - chunk, width).expand(rows, chunk).contiguous()
    if scored_only:  # the head, soft-cap, tilt inputs and loss at the chunk's scored positions only
        targets, hints, kw = full_targets[:, -chunk:], hints_full[:, -chunk:], {"cols": cols.to(device)}
    else:  # every position, the chunk's taken afterwards
        targets, hints, kw = full_targets, hints_full, {}
    describe = {"preset": preset, "rows": rows, "width": width, "chunk": chunk, "tilt": tilt,
                "asym_logit": cap is not None}  # fmt: skip
    return TttChunk(
        forward, lora, inputs.to(device), targets.to(device), hints.to(device), kw, chunk, tilt, cfg, describe
    )
