"""Drawing the next token from a model's logits: greedy, or sampled after a temperature, top-k and top-p, from one
random stream for the whole batch or one stream per row; and the settings of the stories a person reads."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ghoul.errors import GhoulError

# A sampler's random streams: one for the batch, or one per row, so that what a row draws depends neither on the
# batch it is in nor on its place there (ghoul.generate seeds each story's by its id)
Generators = torch.Generator | Sequence[torch.Generator] | None


# Sampling for a person to read (the report's samples, training's samples.jsonl): a temperature below 1 and a top-k
# leave out the unlikeliest tokens, where a small model's made-up words come from (README, "Sampling for reading").
# Stories for a judge are sampled from the whole distribution instead (docs/feedback.md).
READING_SAMPLING = dict(temperature=0.8, top_k=50)


def sample_next(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: Generators = None) -> torch.Tensor:
    """One token id per row of `logits` (B, V): greedy at temperature 0, else sampled after top-k and top-p, from
    `generator` (one per row where it is a sequence)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the best one always stays)
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    probs = logits.softmax(dim=-1)
    try:
        if generator is None or isinstance(generator, torch.Generator):
            return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
        return torch.cat([torch.multinomial(row, 1, generator=g) for row, g in zip(probs, generator, strict=True)])
    except RuntimeError as e:  # torch's check of the probabilities, on the CPU (a GPU's asserts in the kernel)
        if "probability tensor contains" not in str(e):
            raise
        raise GhoulError("the model's next-token probabilities are not finite (NaN or inf): its weights have "
                         "diverged; use an earlier checkpoint, or train again at a lower learning rate") from None
