"""Where the code runs: the device picked automatically (cuda > mps > cpu)."""

from __future__ import annotations

import torch


def default_device() -> str:
    """The best device this machine has: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"
