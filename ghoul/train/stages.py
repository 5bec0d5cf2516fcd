"""`ghoul pretrain` (a fresh model) and `ghoul finetune` (from a checkpoint): the same loop, another start."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul import dist
from ghoul.checkpoint import load_model_dir, read_trainer_state
from ghoul.config import flag, group, member_defaults, option, refuse_changed
from ghoul.data.shards import check_data_tokenizer, dataset_tokenizer
from ghoul.errors import GhoulError
from ghoul.files import read_json
from ghoul.layout import CONFIG_FILE, newest_checkpoint
from ghoul.model import GPT, PRESETS, GPTConfig, vocab_padding
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.train.config import (
    BatchOptions,
    HellaswagOptions,
    LoopOptions,
    OptimOptions,
    RunOptions,
    SampleOptions,
    TrainConfig,
    check_dataset,
    check_training,
    dataset_option,
)
from ghoul.train.context import training_run
from ghoul.train.hooks import HellaswagHook, SampleHook
from ghoul.train.loop import TrainResult, train


@dataclass
class FinetuneConfig:
    """`ghoul finetune`: a model directory trained on further token shards; it keeps its architecture."""

    dataset: str = dataset_option()
    base_model: Path | None = option(None, "model directory to start from (e.g. a pretraining run) (required, "
                                           "unless --resume)")
    run: RunOptions = group(RunOptions, output_dir=Path("runs/finetune"))
    optim: OptimOptions = group(OptimOptions, learning_rate=1.8e-4, warmdown_iters=10)
    batch: BatchOptions = group(BatchOptions)
    loop: LoopOptions = group(LoopOptions, max_steps=50)
    hellaswag: HellaswagOptions = group(HellaswagOptions)
    sample: SampleOptions = group(SampleOptions)

    def __post_init__(self) -> None:
        check_training(self)
        check_dataset(self.dataset, self.run.output_dir)
        if self.base_model is None and self.run.resume is None:
            raise GhoulError("--base-model is required: the model directory to fine-tune (e.g. a pretraining run)")


def start_model(cfg: TrainConfig | FinetuneConfig, resume_from: Path | None) -> tuple[GPT, Tokenizer]:
    """The model to train: the checkpoint resumed, the base model fine-tuned, or a fresh preset."""
    source = resume_from or getattr(cfg, "base_model", None)
    if source is not None:
        model, tokenizer = load_model_dir(source), load_tokenizer(source)
        check_data_tokenizer(cfg.dataset, tokenizer, source)
        if resume_from is not None and hasattr(cfg, "arch"):
            check_resumed_model(cfg, model.config, resume_from)
        elif resume_from is not None and cfg.base_model is not None:  # a fine-tune resumed: its model is the run's
            refuse_changed(cfg, read_json(cfg.run.output_dir / CONFIG_FILE), ["base_model"], cfg.run.output_dir)
        return model, tokenizer
    tokenizer = dataset_tokenizer(cfg.dataset)
    arch = cfg.arch
    config = GPTConfig.from_name(arch.model, vocab_size=tokenizer.vocab_size,
                                 vocab_padding=vocab_padding(arch.pad_vocab), **arch.architecture())
    return GPT(config), tokenizer


def check_resumed_model(cfg: TrainConfig, config: GPTConfig, checkpoint: Path) -> None:
    """A resumed run keeps its model: a model option given (set to other than its default) that asks for another
    model than the checkpoint's is refused, not silently ignored. The same options as the run's pass."""
    arch, defaults = cfg.arch, member_defaults(cfg, "arch")
    # GPTConfig field -> (the option asking, the value it asks for); a switch overrides its preset
    asks: dict[str, tuple[str, Any]] = {}
    if arch.model != defaults["model"]:
        asks.update({name: ("model", value) for name, value in PRESETS[arch.model].items()})
    if arch.pad_vocab != defaults["pad_vocab"]:
        asks["vocab_padding"] = ("pad_vocab", vocab_padding(arch.pad_vocab))
    asks.update({name: (name, value) for name, value in arch.architecture().items()})
    for name, (option_name, value) in asks.items():
        if getattr(config, name) != value:
            raise GhoulError(f"{flag(option_name)} asks for {name} {value}, but the model resumed from {checkpoint} "
                             f"has {getattr(config, name)}: a resumed run keeps its model; leave {flag(option_name)} "
                             f"out, or start a new run in another --output-dir")


def run(cfg: TrainConfig | FinetuneConfig) -> TrainResult:
    """Pretrain or fine-tune as `cfg` says, on one process or as one rank under torchrun."""
    with training_run(cfg.run) as (d, resume_from):
        model, tokenizer = start_model(cfg, resume_from)
        dist.allow_tf32()  # also here for callers that train without the CLI
        hooks = [HellaswagHook(cfg.hellaswag, tokenizer, d, cfg.loop),
                 SampleHook(cfg.sample, tokenizer, cfg.run.seed, d)]
        return train(cfg, model.to(d.device), tokenizer, d, resume_from=resume_from, hooks=hooks)


def max_steps(cfg: Any) -> int:
    """A training stage's step count: in its loop options, or (PPO, GRPO) among its own."""
    return getattr(cfg, "loop", cfg).max_steps


def run_or_resume(cfg: Any, train: Callable[[Any], Any] | None = None) -> Any:
    """Run `train(cfg)` (default: pretrain/fine-tune) unless its run already finished: resume an interrupted run from
    its checkpoint, start over one with nothing to resume (stopped before its first checkpoint).
    Returns None when there was nothing left to do, so pipelines rerun this freely."""
    run_dir = cfg.run.output_dir
    newest = newest_checkpoint(run_dir)
    if newest is not None:
        if read_trainer_state(newest)["step"] >= max_steps(cfg):
            return None
        cfg.run.resume = "latest"
    elif run_dir.exists():
        shutil.rmtree(run_dir)
    return (train or run)(cfg)
