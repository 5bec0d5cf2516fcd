"""`ghoul pretrain` (a fresh model) and `ghoul finetune` (from a checkpoint): the same loop, another start."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from ghoul import dist
from ghoul.checkpoint import newest_checkpoint, read_trainer_state
from ghoul.config import flag, option
from ghoul.data.shards import check_data_tokenizer, dataset_tokenizer
from ghoul.errors import GhoulError
from ghoul.model import GPT, GPTConfig, vocab_padding
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.train.config import ArchitectureOptions, TrainConfig
from ghoul.train.loop import TrainResult, check_run_dir, train


@dataclass
class FinetuneConfig(TrainConfig):
    output_dir: Path = option(Path("runs/finetune"), "run directory: log, samples, checkpoints")
    learning_rate: float = option(1.8e-4, "peak learning rate")
    max_steps: int = option(50, "optimizer steps")
    warmdown_iters: int = option(10, "steps of linear decay to zero at the end")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.base_model is None and self.resume is None:
            raise GhoulError("--base-model is required: the model directory to fine-tune (e.g. a pretraining run)")
        changed = [flag(f.name) for f in fields(ArchitectureOptions) if getattr(self, f.name) != f.default]
        if changed:  # the model comes whole from its directory: these would be silently ignored
            raise GhoulError(f"{', '.join(changed)} shape a fresh model only; a fine-tune keeps the architecture of "
                             "--base-model: leave them out")


def start_model(cfg: TrainConfig, resume_from: Path | None) -> tuple[GPT, Tokenizer]:
    """The model to train: the checkpoint resumed, the base model fine-tuned, or a fresh preset."""
    source = resume_from or cfg.base_model
    if source is not None:
        model, tokenizer = GPT.from_pretrained(source), load_tokenizer(source)
        check_data_tokenizer(cfg.dataset, tokenizer, source)
        return model, tokenizer
    tokenizer = dataset_tokenizer(cfg.dataset)
    config = GPTConfig.from_name(cfg.model, vocab_size=tokenizer.vocab_size, vocab_padding=vocab_padding(cfg.pad_vocab),
                                 **cfg.architecture())
    return GPT(config), tokenizer


def run(cfg: TrainConfig) -> TrainResult:
    """Pretrain or fine-tune as `cfg` says, on one process or as one rank under torchrun."""
    d = dist.setup(cfg.device, cfg.dist_timeout_minutes)
    try:
        resume_from = check_run_dir(cfg)
        dist.barrier()  # every rank has checked the run directory before rank 0 writes into it
        torch.manual_seed(cfg.seed)
        model, tokenizer = start_model(cfg, resume_from)
        dist.allow_tf32()  # also here for callers that train without the CLI
        return train(cfg, model.to(d.device), tokenizer, d, resume_from=resume_from)
    finally:
        dist.teardown()


def run_or_resume(cfg: Any, train: Callable[[Any], Any] | None = None) -> Any:
    """Run `train(cfg)` (default: pretrain/fine-tune) unless its run already finished: resume an interrupted run from
    its checkpoint, start over one with nothing to resume (stopped before its first checkpoint).
    Returns None when there was nothing left to do, so pipelines rerun this freely."""
    run_dir = cfg.output_dir
    newest = newest_checkpoint(run_dir)
    if newest is not None:
        if read_trainer_state(newest)["step"] >= cfg.max_steps:
            return None
        cfg.resume = "latest"
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    return (train or run)(cfg)
