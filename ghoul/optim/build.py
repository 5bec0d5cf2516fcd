"""Parameter groups and optimizers: what gets weight decay, what gets Muon, what gets AdamW."""

from __future__ import annotations

import torch

from ghoul.optim.muon import Muon


def split_params(model: torch.nn.Module) -> dict[str, list[torch.nn.Parameter]]:
    """Parameters by role: `matrices` (2-D hidden weights), `embeddings` (token/position tables, the tied head),
    `gains` (LayerNorm gains and all biases)."""
    groups: dict[str, list[torch.nn.Parameter]] = {"matrices": [], "embeddings": [], "gains": []}
    for name, p in model.named_parameters():  # the tied head appears once, as transformer.wte.weight
        if not p.requires_grad:
            continue
        if p.ndim < 2:
            groups["gains"].append(p)
        elif "wte" in name or "wpe" in name or name.startswith("lm_head"):
            groups["embeddings"].append(p)
        else:
            groups["matrices"].append(p)
    return groups


def build_optimizers(model: torch.nn.Module, kind: str, lr: float, weight_decay: float, betas=(0.9, 0.95),
                     muon_lr: float = 0.02, device_type: str = "cpu") -> list[torch.optim.Optimizer]:
    """AdamW with decay on 2-D weights only; or Muon for hidden matrices plus AdamW for the rest.

    Every group remembers its peak rate as `initial_lr`, so the schedule only multiplies it.
    """
    if kind not in ("adamw", "muon"):
        raise ValueError(f"unknown optimizer {kind!r}")
    groups = split_params(model)
    # decay only 2-D weights: matmuls and embeddings, not gains and biases (Muon's matrices: in Muon)
    decayed = groups["embeddings"] if kind == "muon" else groups["matrices"] + groups["embeddings"]
    # fused AdamW runs the whole update in one kernel per device (CUDA and, since torch 2.4, CPU)
    optimizers = [torch.optim.AdamW([dict(params=decayed, weight_decay=weight_decay),
                                     dict(params=groups["gains"], weight_decay=0.0)],
                                    lr=lr, betas=betas, eps=1e-8, fused=device_type in ("cuda", "cpu"))]
    if kind == "muon":
        optimizers.append(Muon(groups["matrices"], lr=muon_lr, weight_decay=weight_decay))
    for opt in optimizers:
        for group in opt.param_groups:
            group["initial_lr"] = group["lr"]
    return optimizers
