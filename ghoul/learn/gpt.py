"""`ghoul learn gpt`: the real GPT at a small size, trained on horror stories with our own tokenizer, with the
architecture switches of `GPTConfig` as flags (norm, activation, positions, tying, QK-norm, mixture of experts)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ghoul.config import option
from ghoul.learn.common import LearnConfig, LearnResult, check_fresh, prepare_text, train_model
from ghoul.model import GPT, GPTConfig
from ghoul.train.config import ADAMW_BESIDE_MUON, ArchitectureOptions

FIXED = ("vocab_size", "block_size")  # set by the tokenizer and the data, not by a model variant


@dataclass
class LearnGPTConfig(LearnConfig, ArchitectureOptions):
    output_dir: Path = option(Path("runs/learn-gpt"), "output directory: tokenizer, token shards, run log, checkpoint")
    steps: int = option(300, "optimizer steps")
    optimizer: str = option("muon", "Muon for the hidden matrices and AdamW for the rest (learns several times "
                                    "faster in short runs), or AdamW for everything", choices=["muon", "adamw"])
    learning_rate: float = option(0.02, f"peak learning rate of AdamW (with Muon: of {ADAMW_BESIDE_MUON})")
    muon_lr: float = option(0.02, "peak learning rate of Muon")
    warmup_iters: int = option(10, "steps of linear warmup")
    n_layer: int = option(4, "transformer blocks")
    n_head: int = option(4, "attention heads")
    n_embd: int = option(128, "width of the residual stream")
    dropout: float = option(0.0, "dropout probability")

    def __post_init__(self) -> None:
        super().__post_init__()
        model_config(self, vocab_size=1)  # a bad architecture fails now, with GPTConfig's message

    def optimizer_options(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer, "muon_lr": self.muon_lr}


def model_config(cfg: LearnGPTConfig, vocab_size: int, overrides: dict[str, Any] | None = None) -> GPTConfig:
    """The GPTConfig of `cfg`'s architecture flags and block size, with a variant's `overrides` on top."""
    values = {f.name: getattr(cfg, f.name) for f in fields(GPTConfig) if getattr(cfg, f.name, None) is not None}
    return GPTConfig(**{**values, **(overrides or {}), "vocab_size": vocab_size})


def run(cfg: LearnGPTConfig) -> LearnResult:
    """Tokenize the text, train the GPT on it with the one training loop, print val loss and a sample."""
    check_fresh(cfg.output_dir)
    data_dir, tokenizer = prepare_text(cfg, cfg.output_dir)
    return train_model(cfg, lambda vocab: GPT(model_config(cfg, vocab)), tokenizer, data_dir, cfg.output_dir)
