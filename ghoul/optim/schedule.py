"""Learning-rate schedules as multipliers of the peak rate: warmup, then constant or cosine, then warmdown."""

from __future__ import annotations

import math


def lr_multiplier(step: int, max_steps: int, warmup_iters: int = 0, warmdown_iters: int = 0,
                  schedule: str = "trapezoid", min_lr_frac: float = 0.0) -> float:
    """Multiplier of the peak learning rate for the update made at `step` (0-based).

    trapezoid: linear warmup over `warmup_iters`, constant, then linear decay to `min_lr_frac` over the last
    `warmdown_iters` steps (the "warmup-stable-decay" schedule of modded-nanogpt).
    cosine: linear warmup, then cosine decay to `min_lr_frac` at `max_steps` (GPT-3, nanoGPT).
    """
    if step < warmup_iters:
        return (step + 1) / warmup_iters
    if schedule == "cosine":
        progress = (step - warmup_iters) / max(1, max_steps - warmup_iters)
        return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule != "trapezoid":
        raise ValueError(f"unknown schedule {schedule!r}")
    if step >= max_steps - warmdown_iters:
        remaining = (max_steps - step) / max(1, warmdown_iters)  # 1 at the start of the warmdown, 1/n at its end
        return min_lr_frac + (1 - min_lr_frac) * remaining
    return 1.0
