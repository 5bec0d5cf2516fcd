"""The one training loop: gradient accumulation, DDP, schedules, evaluation, samples, checkpoints, exact resume.

Stages differ in their model, data and loss, not in this loop: `loss_fn(model, *batch)` is passed in, and so may
be the data (`train_data`, `val_data`: anything with the loader protocol of `ShardLoader`, e.g. preference pairs).
A loss function returns the loss, or `(loss, metrics)` whose values are averaged and logged (DPO's reward margin).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple, Protocol

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ghoul import dist
from ghoul.advice import advice
from ghoul.checkpoint import (
    OPTIMIZER_FILE,
    SHARDED_OPTIMIZER,
    load_optimizer_states,
    load_training_checkpoint,
    read_trainer_state,
    save_training_checkpoint,
)
from ghoul.config import to_dict
from ghoul.data.loader import ShardLoader
from ghoul.errors import GhoulError
from ghoul.eval.loss import bits_per_byte, target_bytes
from ghoul.files import is_disk_full
from ghoul.layout import WEIGHTS_FILE, newest_checkpoint, resolve_checkpoint, step_dir
from ghoul.model import GPT
from ghoul.optim.build import build_optimizers
from ghoul.optim.schedule import lr_multiplier
from ghoul.tokenizer import Tokenizer
from ghoul.train.context import check_steps_left, open_run_dir, rng_state, set_rng_state
from ghoul.train.interrupt import StepInterrupt
from ghoul.train.logger import RunLogger

LossFn = Callable[..., torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]]


class Hook(Protocol):
    """What the loop runs every `every` steps (0: never) and at the last, given by the stage that trains: it adds
    to the step's record, or writes through the run's logger."""

    every: int

    def __call__(self, step: int, model: GPT, record: dict[str, Any], logger: RunLogger) -> None: ...


class Loader(Protocol):
    """What the loop needs of its data: `ShardLoader` has it, and so do the preference-pair loaders."""

    device: torch.device

    def __next__(self) -> tuple[torch.Tensor, ...]: ...
    def one_epoch(self, max_batches: int | None = None) -> Iterator[tuple[torch.Tensor, ...]]: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: the loss of pretraining and fine-tuning."""
    return model(x, y)[1]


def call_loss(loss_fn: LossFn, model: torch.nn.Module, batch: tuple[torch.Tensor, ...]
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(loss, metrics) of one batch, whether `loss_fn` returns metrics or only the loss."""
    out = loss_fn(model, *batch)
    return out if isinstance(out, tuple) else (out, {})


def add_metrics(sums: dict[str, torch.Tensor], metrics: dict[str, torch.Tensor], weight: float) -> None:
    """Accumulate detached metrics on the device: no host sync until the step is logged."""
    for k, v in metrics.items():
        v = torch.as_tensor(v).detach().float()
        sums[k] = sums[k] + v * weight if k in sums else v * weight


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    final_loss: float
    val_loss: float | None
    checkpoint: Path
    val_bpb: float | None = None  # bits per byte, for the LM loss on token shards

    @classmethod
    def of(cls, run_dir: Path, step: int, record: dict[str, Any], checkpoint: Path) -> TrainResult:
        """The result of a run whose last step logged `record` (the last step is always logged and evaluated: its
        record holds the run's final figures), said in one line."""
        loss, val_loss, val_bpb = record["loss"], record.get("val_loss"), record.get("val_bpb")
        # the validation batches are a sample of the split (--eval-iters): the line says how large
        of_text = f" ({val_bpb:.4f} bits per byte, {record['val_tokens']:,} validation tokens)" if val_bpb else ""
        dist.print0(f"done: {step} steps, loss {loss:.4f}" + (f", val loss {val_loss:.4f}" if val_loss else "")
                    + of_text + f"; checkpoint {checkpoint}")
        return cls(run_dir, step, loss, val_loss, checkpoint, val_bpb)


# ---- evaluation during training --------------------------------------------------------------------------------

class ValText(NamedTuple):
    """The text of the batches `validation` reads, over all ranks: how many target tokens, and their UTF-8 bytes per
    token (each rank reads as many tokens, so the mean of the ranks' losses is per token of this total)."""
    tokens: int
    bytes_per_token: float


@torch.no_grad()
def validation(model: torch.nn.Module, loader: Loader, iters: int, loss_fn: LossFn, dtype: str, device_type: str,
               text: ValText | None = None) -> dict[str, float]:
    """A step's validation figures, over all ranks: the mean loss and metrics of the first `iters` batches of `loader`
    (the same batches every time), and bits per byte and the tokens they cover when their `text` is known."""
    model.eval()
    total = torch.zeros((), device=loader.device)
    sums: dict[str, torch.Tensor] = {}
    n = 0
    for batch in loader.one_epoch(iters):
        with dist.autocast(device_type, dtype):
            loss, batch_metrics = call_loss(loss_fn, model, batch)
        total += loss.float()
        add_metrics(sums, batch_metrics, 1.0)
        n += 1
    model.train()
    metrics = {f"val_{k}": dist.all_reduce_mean(v / max(n, 1)).item() for k, v in sorted(sums.items())}
    record = {"val_loss": dist.all_reduce_mean(total / max(n, 1)).item(), **metrics}
    if text is not None and text.tokens:
        record.update(val_bpb=bits_per_byte(record["val_loss"], text.bytes_per_token),
                      val_bytes_per_token=text.bytes_per_token, val_tokens=text.tokens)
    return record


def read_val_text(loader: Loader, iters: int, tokenizer: Tokenizer, device: str) -> ValText:
    """The ValText of the batches `validation` reads from `loader`."""
    lengths = tokenizer.token_byte_lengths()
    counts = [(target_bytes(lengths, y), y.numel()) for _, y in loader.one_epoch(iters)]
    n_bytes, n_tokens = dist.all_reduce_sum([sum(b for b, _ in counts), sum(n for _, n in counts)], device)
    return ValText(int(n_tokens), n_bytes / max(n_tokens, 1))


def due(step: int, every: int, max_steps: int) -> bool:
    """Whether what runs every `every` steps (0: never) runs after `step`: it always does after the last."""
    return every > 0 and (step % every == 0 or step == max_steps)


def evaluation_due(step: int, loop: Any, validates: bool, hooks: Sequence[Hook]) -> bool:
    """Whether the validation loss (when `validates`) or a hook runs after `step`."""
    everys = (loop.eval_every if validates else 0, *(hook.every for hook in hooks))
    return any(due(step, every, loop.max_steps) for every in everys)


# ---- the loop --------------------------------------------------------------------------------------------------

def train(cfg: Any, model: GPT, tokenizer: Tokenizer, d: dist.DistInfo, loss_fn: LossFn = lm_loss,
          resume_from: Path | None = None, train_data: Loader | None = None, val_data: Loader | None = None,
          hooks: Sequence[Hook] = ()) -> TrainResult:
    """Train `model` (already on `d.device`) as `cfg` says, on `train_data` (default: token shards of
    `cfg.dataset`, with its val split as `val_data`); rank 0 writes the run directory. `cfg` is a training stage's
    config: its groups `run`, `optim`, `batch` and `loop`. `hooks` run beside the validation loss (HellaSwag,
    samples: ghoul.train.hooks)."""
    run, optim, batch, loop = cfg.run, cfg.optim, cfg.batch, cfg.loop
    # config.json records the precision the run used; the bigram has no width (autocast leaves its lookup as it is)
    loop.dtype = dist.resolve_dtype(loop.dtype, d.device, getattr(model.config, "n_embd", None))
    # token windows of one length through a dense model: the same shapes at every step
    fixed_shapes = train_data is None and not getattr(model.config, "moe_experts", 0)
    loop.compile = dist.resolve_compile(loop.compile, d, loop.dtype, fixed_shapes, loop.max_steps)
    seq_len = batch.seq_len or model.config.block_size
    if seq_len > model.config.block_size:
        raise GhoulError(f"--seq-len {seq_len} exceeds the model's block size {model.config.block_size}")
    accum = batch.accumulation(seq_len, d.world_size)
    train_data, val_data, val_text = run_loaders(cfg, model, tokenizer, d, loss_fn, seq_len, train_data, val_data)

    raw_model, model = model, wrap(model, loop, d)  # first: FSDP replaces the parameters by their shards
    optimizers = build_optimizers(raw_model, optim.optimizer, optim.learning_rate, optim.weight_decay,
                                  (optim.beta1, optim.beta2), optim.muon_lr, d.device_type)
    state = {} if resume_from is None else resume_training(resume_from, raw_model, optimizers, train_data,
                                                           loop.max_steps)
    start_step = state.get("step", 0)
    logger = open_run_dir(run.output_dir, d, to_dict(cfg), start_step if resume_from is not None else None,
                          loop.wandb_project if loop.wandb else None)
    tokens_per_step = batch.batch_size * seq_len * d.world_size * accum  # of token shards; pairs vary in length
    progress = Progress(d, run.output_dir, state.get("tokens", start_step * tokens_per_step),
                        raw_model.flops_per_token(seq_len), dist.peak_flops(d.device, loop.dtype))
    if loop.dtype == "bfloat16" and not dist.fast_bfloat16(d.device):
        dist.print0(f"warning: this {d.device_type} has no native bfloat16 matmuls; --dtype float32 will be faster")
    dist.print0(f"training {raw_model.num_params():,} parameters on {d.world_size} x {d.device}: {tokens_per_step:,} "
                f"tokens per step ({accum} accumulation steps), steps {start_step}..{loop.max_steps}"
                + (", blocks compiled at the first step" if loop.compile else ""))

    def evaluate(step: int, record: dict[str, Any]) -> dict[str, Any]:
        if val_data is not None and due(step, loop.eval_every, loop.max_steps):
            record |= validation(model, val_data, loop.eval_iters, loss_fn, loop.dtype, d.device_type, val_text)
        for hook in hooks:
            if due(step, hook.every, loop.max_steps):
                # eager: HellaSwag's lengths and sampling's growing cache would compile the blocks anew at each shape
                with torch.compiler.set_stance("force_eager"):
                    hook(step, raw_model, record, logger)
        return record

    def save(step: int) -> Path:
        state = {"step": step, "loader": train_data.state_dict(), "rng": rng_state(), "config": to_dict(cfg),
                 "tokens": progress.tokens_now()}
        return save_checkpoint(run.output_dir, step, raw_model, optimizers, state, tokenizer, loop, d)

    model.train()
    if start_step == 0:
        record = evaluate(0, {"step": 0})
        if len(record) > 1:
            logger.log(record)
    # opened after step 0's evaluation: a bar left open by its error would be drawn after the message
    bar = tqdm(total=loop.max_steps, initial=start_step, desc="training", unit="step", disable=not d.is_main,
               file=sys.stderr, dynamic_ncols=True)
    progress.interval_start = time.perf_counter()  # step 0's evaluation is left out of the first interval
    step, saved_step, stopped = start_step, None, False
    with bar, stopping(d, run.output_dir) as interrupt:
        while step < loop.max_steps:
            loss_sum, metric_sums, step_tokens = accumulate_gradients(model, train_data, loss_fn, accum, d, loop.dtype)
            lr_mult = lr_multiplier(step, loop.max_steps, optim.warmup_iters, optim.warmdown_iters, optim.schedule)
            grad_norm = update(model, raw_model, optimizers, lr_mult, optim.grad_clip)
            step += 1
            progress.unlogged += step_tokens
            logged = due(step, loop.log_every, loop.max_steps)
            if logged:
                lr = optim.learning_rate * lr_mult
                record = evaluate(step, progress.record(step, loss_sum, metric_sums, grad_norm, lr))
                logger.log(record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", tok_s=f"{record['tokens_per_s']:,.0f}", refresh=False)
            elif evaluation_due(step, loop, val_data is not None, hooks):  # e.g. --eval-every 25 with --log-every 10
                with progress.paused():
                    logger.log(evaluate(step, {"step": step, "tokens": progress.tokens_now()}))
            bar.update(1)
            if loop.checkpoint_every and step % loop.checkpoint_every == 0 and step < loop.max_steps:
                with progress.paused():
                    last_checkpoint, saved_step = save(step), step
            if logged:  # evaluation, samples and checkpoints are left out of the next interval
                progress.interval_start = time.perf_counter()
            # Ctrl-C: the weights, optimizer, data position and RNG all stand at the end of this step
            if step < loop.max_steps and interrupt.agreed(logged):
                stopped = True
                break
        if saved_step != step:  # the end of the run, or of an interrupted one
            last_checkpoint = save(step)
        if stopped:
            dist.barrier()  # no rank exits (which has torchrun stop the others) before rank 0 has saved
    if stopped:
        dist.print0(f"\ninterrupted after step {step}: saved {last_checkpoint}; {advice().go_on}")
        raise KeyboardInterrupt
    logger.close()
    return TrainResult.of(run.output_dir, step, record, last_checkpoint)


# ---- the pieces of a run: its data, resume, wrapping, one step, log records, and how it stops -----------------

def run_loaders(cfg: Any, model: GPT, tokenizer: Tokenizer, d: dist.DistInfo, loss_fn: LossFn, seq_len: int,
                train_data: Loader | None, val_data: Loader | None) -> tuple[Loader, Loader | None, ValText | None]:
    """The run's training and validation loaders (default: the token shards of `cfg.dataset`; none for validation
    without --eval-every), and the validation batches' text: bits per byte for the LM loss on token shards, not
    for pair losses."""
    loop = cfg.loop
    if train_data is not None:
        return train_data, val_data if loop.eval_every else None, None
    train_data, val_data = shard_loaders(cfg.dataset, cfg.batch.batch_size, seq_len, d, model.config.vocab_size,
                                         loop.eval_every > 0)
    if val_data is None or loss_fn is not lm_loss:
        return train_data, val_data, None
    # the same batches at every evaluation: counted once
    return train_data, val_data, read_val_text(val_data, loop.eval_iters, tokenizer, d.device)


def shard_loaders(dataset: str, batch_size: int, seq_len: int, d: dist.DistInfo, vocab_size: int, validate: bool
                  ) -> tuple[ShardLoader, ShardLoader | None]:
    """This rank's loaders of the token shards' train split and (when `validate`, and the shards have one) val."""
    train_data = ShardLoader(dataset, batch_size, seq_len, rank=d.rank, world_size=d.world_size, device=d.device,
                             vocab_size=vocab_size)
    if train_data.vocab_size is not None and train_data.vocab_size > vocab_size:
        raise GhoulError(f"{dataset} was made with a {train_data.vocab_size:,}-token vocabulary but the model has "
                         f"{vocab_size:,}: prepare the data with the model's tokenizer")
    if not validate:
        return train_data, None
    try:
        return train_data, ShardLoader(dataset, batch_size, seq_len, split="val", rank=d.rank,
                                       world_size=d.world_size, device=d.device, vocab_size=vocab_size)
    except GhoulError as e:
        dist.print0(f"no validation loss: {e}")
        return train_data, None


def resume_training(checkpoint: Path, model: GPT, optimizers: list[torch.optim.Optimizer], train_data: Loader,
                    max_steps: int) -> dict[str, Any]:
    """Put the optimizers, the data position and the random state back where `checkpoint` left them; its trainer
    state (step, tokens read, ...). The optimizer state of an FSDP run is read sharded, for any number of ranks."""
    check_run_kind(checkpoint, read_trainer_state(resolve_checkpoint(checkpoint)), train_data)
    state, opt_states, _ = load_training_checkpoint(checkpoint, required=("step", "loader", "rng"))
    check_steps_left(checkpoint, state["step"], max_steps)
    if opt_states is None:
        sharding().load_optimizer_states(model, optimizers, resolve_checkpoint(checkpoint) / SHARDED_OPTIMIZER)
    elif is_sharded(model):
        raise GhoulError(f"{checkpoint} was saved by a --parallel ddp run (its {OPTIMIZER_FILE} holds whole "
                         "optimizer states): resume it with --parallel ddp")
    else:
        load_optimizer_states(optimizers, opt_states, checkpoint)
    try:
        train_data.load_state_dict(state["loader"])
        set_rng_state(state["rng"])
    except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:  # an edited trainer_state.json
        raise GhoulError(f"{checkpoint} is damaged (its loader or random state: {type(e).__name__}: "
                         f"{str(e)[:100]}): resume from an earlier checkpoint with --resume DIR") from None
    return state


def check_run_kind(checkpoint: Path, state: dict[str, Any], loader: Loader) -> None:
    """A checkpoint of another kind of run is named for what it is, not taken for a damaged one or one of other
    settings: PPO's and GRPO's (no data position), and one that read the other kind of data."""
    if "method" in state:
        raise GhoulError(f"{checkpoint} was saved by `ghoul {state['method']}`: continue it with that command, or "
                         "leave out --resume")
    saved = state.get("loader")
    kinds = ("token shards (pretrain, finetune)", "preference pairs (dpo, reward train)")
    if isinstance(saved, dict) and ("pairs" in saved) != ("pairs" in loader.state_dict()):
        raise GhoulError(f"{checkpoint} was saved by a run on {kinds['pairs' in saved]}, not on "
                         f"{kinds['pairs' not in saved]}: resume it with the command that made it, or leave out "
                         "--resume")


def save_checkpoint(run_dir: Path, step: int, model: GPT, optimizers: list[torch.optim.Optimizer], state: dict,
                    tokenizer: Tokenizer, loop: Any, d: dist.DistInfo) -> Path:
    """`RUN/step_N`, written by rank 0; under FSDP every rank first writes its own part of the weights and of the
    optimizer state, which rank 0 moves in."""
    written = {}
    if loop.parallel == "fsdp":
        written = {name: run_dir / f".{step_dir(run_dir, step).name}.{name}.tmp"
                   for name in (WEIGHTS_FILE, SHARDED_OPTIMIZER)}
        sharding().save_weights(model, written[WEIGHTS_FILE], d)
        sharding().save_optimizer_states(model, optimizers, written[SHARDED_OPTIMIZER])
    if not d.is_main:
        return step_dir(run_dir, step)
    return save_training_checkpoint(run_dir, step, model, optimizers, state, tokenizer, loop.keep_last,
                                    written=written)


def sharding() -> ModuleType:
    """ghoul.train.fsdp, imported by the runs that shard: it brings torch's FSDP and DTensor, a second of start-up
    that every other run is spared."""
    from ghoul.train import fsdp  # start-up free of torch.distributed.fsdp and .tensor without --parallel fsdp

    return fsdp


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether FSDP shards `model`: never before a run imported FSDP (sharding())."""
    return "ghoul.train.fsdp" in sys.modules and sharding().is_sharded(model)


def wrap(model: GPT, loop: Any, d: dist.DistInfo) -> torch.nn.Module:
    """The model as it trains: wrappers applied from outside it, in one fixed order (activation checkpointing,
    compile, then DDP; or FSDP's sharding in place, then compile)."""
    model.checkpoint_blocks = loop.activation_checkpointing
    sharded = loop.parallel == "fsdp" and d.distributed
    if sharded:
        sharding().shard_model(model, d, loop.dtype)
    if loop.compile:
        compile_blocks(model)
    if sharded or not d.distributed:
        return model
    # the gradients live in DDP's communication buckets instead of being copied there: one gradient-sized
    # buffer and one copy per step less (5.8 GiB per GPU for gpt2-xl)
    return DDP(model, device_ids=[d.local_rank] if d.device_type == "cuda" else None, gradient_as_bucket_view=True)


def compile_blocks(model: GPT) -> GPT:
    """`model` with each transformer block compiled in place, as torchtitan does: the blocks share one compiled
    code, so compiling takes a block's time, not the model's (on 2 CPU cores: 7 s against 42 s for the default
    run's model, and a 1.25x step against the whole model's 1.13x; benchmarks/RESULTS.md). The output layer and
    its loss stay eager: one large product and a hand-fused loss, which compiling would not speed up. What runs
    the model at changing shapes (sampling, HellaSwag) runs it under torch.compiler.set_stance("force_eager")."""
    # compiled code of an earlier model in this process (learn compare's variants, a benchmark's presets) would be
    # reused with its shapes made dynamic, and past torch's recompile limit (8) blocks would silently run eager
    torch.compiler.reset()
    blocks = model.transformer.h if isinstance(model, GPT) else [model]  # the learning stage's bigram: whole
    for block in blocks:
        block.compile()
    return model


def accumulate_gradients(model: torch.nn.Module, train_data: Loader, loss_fn: LossFn, accum: int, d: dist.DistInfo,
                         dtype: str) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """Forward and backward over `accum` micro-batches, the gradients all-reduced only on the last: the step's mean
    loss and metrics (on the device: no sync) and the tokens read."""
    loss_sum = torch.zeros((), device=d.device)
    metric_sums: dict[str, torch.Tensor] = {}
    step_tokens = 0
    sharded = is_sharded(model)
    for micro in range(accum):
        batch = next(train_data)
        step_tokens += batch[0].numel()  # shape metadata: no device sync
        sync = not d.distributed or micro == accum - 1
        if sharded:
            sharding().set_gradient_sync(model, sync)
        with (contextlib.nullcontext() if sync or sharded else model.no_sync()):
            with dist.autocast(d.device_type, dtype):
                loss, metrics = call_loss(loss_fn, model, batch)
                loss = loss / accum
            loss.backward()
        loss_sum += loss.detach()
        add_metrics(metric_sums, metrics, 1 / accum)
    return loss_sum, metric_sums, step_tokens


def update(model: torch.nn.Module, raw_model: GPT, optimizers: list[torch.optim.Optimizer], lr_mult: float,
           grad_clip: float) -> torch.Tensor | None:
    """Clip the gradients, step every optimizer at its scheduled rate, clear the gradients; the gradient norm."""
    grad_norm = None
    if grad_clip > 0:  # of the whole model under FSDP too: the shards' norms are combined over the ranks
        grad_norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), grad_clip)
        if is_sharded(model):
            grad_norm = sharding().local_value(grad_norm)
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
        opt.step()
        opt.zero_grad(set_to_none=dist.grads_to_none(model))  # under DDP: kept in its buckets
    return grad_norm


class Progress:
    """The log records of a run: its loss, the tokens it read (counted from the batches, where rows of pairs are as
    long as their longest; summed over the ranks at each record; kept in the checkpoint) and the rate, over the steps
    since the last record, timed from one host-device sync (the loss's .item()) to the next: timing one step would
    count the queued work of the steps before it when log_every > 1."""

    def __init__(self, d: dist.DistInfo, run_dir: Path, tokens: int, flops_per_token: float, peak_flops: float | None
                 ) -> None:
        self.d, self.run_dir, self.flops_per_token, self.peak_flops = d, run_dir, flops_per_token, peak_flops
        self.tokens, self.unlogged = tokens, 0  # read by all ranks up to the last record; by this rank since
        self.started = self.interval_start = time.perf_counter()

    def record(self, step: int, loss_sum: torch.Tensor, metric_sums: dict[str, torch.Tensor],
               grad_norm: torch.Tensor | None, lr: float) -> dict[str, Any]:
        """The record of a logged step (its .item() calls are the step's only host-device syncs); a loss that is no
        longer finite stops the run."""
        (unlogged,) = dist.all_reduce_sum([self.unlogged], self.d.device)
        self.tokens, self.unlogged = self.tokens + int(unlogged), 0
        loss = dist.all_reduce_mean(loss_sum).item()
        dt = time.perf_counter() - self.interval_start
        check_finite(loss, step, self.run_dir)
        record = {"step": step, "loss": loss, "lr": lr, "tokens": self.tokens, "tokens_per_s": unlogged / dt,
                  "elapsed": time.perf_counter() - self.started}
        if grad_norm is not None:
            record["grad_norm"] = grad_norm.item()
        if self.peak_flops:
            record["mfu"] = self.flops_per_token * unlogged / dt / self.d.world_size / self.peak_flops
        memory = dist.peak_memory_gib(self.d.device)
        if memory is not None:
            record["peak_memory_gib"] = memory
        return record | {k: dist.all_reduce_mean(v).item() for k, v in sorted(metric_sums.items())}

    def tokens_now(self) -> int:
        """The tokens read so far between records: this rank's share since the last record stands for all."""
        return self.tokens + self.unlogged * self.d.world_size

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """The time of what runs inside (a checkpoint) left out of the interval."""
        dist.synchronize(self.d.device)  # the step's queued work belongs to the interval, not to the pause
        paused = time.perf_counter()
        yield
        self.interval_start += time.perf_counter() - paused


def check_finite(loss: float, step: int, run_dir: Path) -> None:
    """A loss that is no longer finite stops the run before it is saved, naming the last good checkpoint."""
    if not math.isfinite(loss):
        last = newest_checkpoint(run_dir)
        raise GhoulError(f"the loss became {loss} at step {step}; " + (
            f"the last good checkpoint is {last.name}: {advice().retune}" if last else
            f"no checkpoint was written yet: {advice().restart}"))


@contextlib.contextmanager
def stopping(d: dist.DistInfo, run_dir: Path) -> Iterator[StepInterrupt]:
    """How a run stops: on a first Ctrl-C at the end of a step (StepInterrupt); on a second at once, and on a full
    disk where it is, each with what stands on disk and how to go on."""
    interrupt = StepInterrupt(d).install()
    try:
        yield interrupt
    except KeyboardInterrupt:  # a second Ctrl-C: mid-step, so nothing is saved that could not resume exactly
        last = newest_checkpoint(run_dir)
        dist.print0("\nstopped at once, saving nothing: " + (f"the newest checkpoint is {last}; {advice().go_on}"
                                                              if last else "no checkpoint was written yet"))
        raise
    except OSError as e:
        if not is_disk_full(e):
            raise
        last = newest_checkpoint(run_dir)
        raise GhoulError(f"no space left on the device of {run_dir} ({e.filename or 'a run file'}): the checkpoints "
                         f"before it are intact ({last.name if last else 'none yet'}); free some space and "
                         f"{advice().go_on}") from None
    finally:
        interrupt.remove()
