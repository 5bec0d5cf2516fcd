"""Muon: momentum whose update is orthogonalised by a Newton-Schulz iteration, for 2-D hidden weight matrices.

After Keller Jordan's Muon in modded-nanogpt (kellerjordan.github.io/posts/muon). Under DDP every rank holds the
same averaged gradient, so every rank computes the same update and the replicas stay identical. Under FSDP a
parameter, its gradient and its momentum are shards of rows; the iteration needs the whole matrix, so the
momentum-corrected gradient is gathered, orthogonalised on every rank alike, and each rank keeps its own rows.
"""

from __future__ import annotations

import sys

import torch

from ghoul.dist import fast_bfloat16

# Quintic coefficients chosen in modded-nanogpt to push singular values towards 1 fast (they land in ~[0.7, 1.2]).
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: torch.Tensor, steps: int = 5, eps: float = 1e-7) -> torch.Tensor:
    """An approximately orthogonal matrix with the singular vectors of `g` (the "zeroth power" U V^T)."""
    a, b, c = NS_COEFFS
    # bf16 is enough precision for this iteration on GPUs with bf16 tensor cores; older GPUs (T4, V100) would emulate
    # it, slower than float32, and CPUs keep float32, where bf16 buys little here
    x = g.to(torch.bfloat16 if g.is_cuda and fast_bfloat16(g.device) else torch.float32)
    transposed = x.size(0) > x.size(1)
    if transposed:  # iterate on the smaller Gram matrix
        x = x.T
    x = x / (x.norm() + eps)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):  # x <- a x + (b gram + c gram^2) x, the scalings folded into the products
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """SGD with Nesterov momentum whose update is orthogonalised; only for 2-D parameters."""

    def __init__(self, params, lr: float = 0.02, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, ns_steps=ns_steps)
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError(f"Muon takes only 2-D parameters, got shape {tuple(p.shape)}")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                g = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = orthogonal_update(g, group["ns_steps"])
                # keep the update's RMS comparable across shapes (modded-nanogpt's aspect-ratio scale)
                scale = max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"] * scale)


def orthogonal_update(g: torch.Tensor, steps: int) -> torch.Tensor:
    """newton_schulz of the whole matrix, for a gradient that is whole or sharded (FSDP: gathered, then split the
    same way again, without communication)."""
    # DTensors exist only once FSDP has imported their module, which other runs are spared (a second of start-up)
    dtensors = sys.modules.get("torch.distributed.tensor")
    if dtensors is None or not isinstance(g, dtensors.DTensor):
        return newton_schulz(g, steps)
    whole = newton_schulz(g.full_tensor(), steps)
    return dtensors.distribute_tensor(whole, g.device_mesh, g.placements, src_data_rank=None)
