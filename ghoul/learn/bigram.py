"""`ghoul learn bigram`: the simplest language model, a table of next-token logits indexed by the current token,
trained by gradient descent with the same loop, data and loss as the GPT (the first step of the seed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from torch.nn import functional as F

from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.learn.common import LearnConfig, LearnResult, check_fresh, prepare_text, train_model
from ghoul.sampling import sample_next
from ghoul.tokenizer import load_tokenizer


@dataclass
class BigramModelConfig:
    vocab_size: int
    block_size: int  # only the length of the rows it is trained on: the model itself sees one token
    model: str = "bigram"  # written to config.json, so a bigram checkpoint says what it is


class Bigram(nn.Module):
    """logits(next token) = table[current token]: a (vocab, vocab) matrix of bigram log-counts, learned.

    It has the few things the training loop asks of a model besides `forward`: `config`, `num_params`,
    `flops_per_token` and `generate`.
    """

    def __init__(self, config: BigramModelConfig) -> None:
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)
        nn.init.zeros_(self.table.weight)  # every next token equally likely: the loss starts at ln(vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab) and, with `targets` (B, T), the mean cross-entropy loss, as `GPT.forward`."""
        logits = self.table(idx)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    def num_params(self) -> int:
        return self.table.weight.numel()

    def flops_per_token(self, seq_len: int) -> float:
        return 0.0  # a row lookup does no matmul work

    @torch.inference_mode()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, eos_id: int | None = None,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        """Continue each row of `idx` (B, T) by `max_new_tokens` sampled tokens, each from the last one alone."""
        for _ in range(max_new_tokens):
            logits = self.table(idx[:, -1])  # (B, V)
            idx = torch.cat([idx, sample_next(logits, temperature, top_k, top_p, generator)[:, None]], dim=1)
        return idx


@dataclass
class BigramConfig(LearnConfig):
    output_dir: Path = option(Path("runs/learn-bigram"), "output directory: tokenizer, token shards, run log, "
                                                         "checkpoint")
    steps: int = option(200, "optimizer steps")
    # AdamW only: the table is a lookup, not a hidden matrix, so Muon would train none of it
    learning_rate: float = option(0.1, "peak learning rate (AdamW): a lookup table takes large steps")
    weight_decay: float = option(0.0, "decoupled weight decay of the table")


# a V x V table trained with AdamW holds 16 V^2 bytes (weights, gradients, two moments): 4 GiB at this size, 38 GiB
# for GPT-2's vocabulary
MAX_BIGRAM_VOCAB = 16_384


def run(cfg: BigramConfig) -> LearnResult:
    """Tokenize the text, train a bigram table on it with the one training loop, print val loss and a sample."""
    check_fresh(cfg.output_dir)
    trained = cfg.vocab_size if cfg.tokenizer_kind == "bpe" else 0  # characters: a few hundred
    vocab = load_tokenizer(cfg.tokenizer).vocab_size if cfg.tokenizer else trained
    if vocab > MAX_BIGRAM_VOCAB:
        raise GhoulError(f"a bigram over {vocab:,} tokens is a {vocab:,} x {vocab:,} table, "
                         f"{16 * vocab ** 2 / 2 ** 30:.0f} GiB to train: use a tokenizer of at most "
                         f"{MAX_BIGRAM_VOCAB:,} tokens (--vocab-size, or another --tokenizer)")
    data_dir, tokenizer = prepare_text(cfg, cfg.output_dir)
    return train_model(cfg, lambda vocab: Bigram(BigramModelConfig(vocab, cfg.block_size)), tokenizer, data_dir,
                       cfg.output_dir)
