"""Evaluation: HellaSwag accuracy, validation loss, and both across the checkpoints of a run, plotted against GPT-2."""

from __future__ import annotations

import torch

from ghoul.model import GPT


def unwrap(model: torch.nn.Module) -> GPT:
    """The GPT inside a DDP (`.module`) or torch.compile (`._orig_mod`) wrapper: scoring calls its methods."""
    while not isinstance(model, GPT):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            raise TypeError(f"expected a ghoul GPT (or a DDP/compiled wrapper of one), got {type(model).__name__}")
        model = inner
    return model
