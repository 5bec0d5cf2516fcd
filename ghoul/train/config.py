"""The options of the stages that train, in groups each stage holds as members (nanoGPT-style names)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ghoul.config import group, member_defaults, option, refuse_set, require
from ghoul.dist import AUTO_COMPILE_MIN_STEPS, CPU_BF16_MIN_WIDTH
from ghoul.errors import GhoulError
from ghoul.model import ACTIVATIONS, NORM_POSITIONS, NORMS, POSITIONS, PRESETS, VOCAB_PADDING

# what AdamW trains beside Muon's hidden matrices (ghoul.optim.build.split_params), for the learning rates' help
ADAMW_BESIDE_MUON = "the embeddings, an untied output layer, gains and biases"


@dataclass
class ArchitectureOptions:
    """The architecture switches of `GPTConfig` as options, for any stage that builds a model. Unset, a switch takes
    the preset's value (`laptop` has its own), else GPT-2's."""

    norm: str | None = option(None, "normalisation (GPT-2: layernorm)", choices=list(NORMS))
    norm_position: str | None = option(None, "normalise each sublayer's input (pre, GPT-2) or its residual sum "
                                             "(post)", choices=list(NORM_POSITIONS))
    activation: str | None = option(None, "MLP nonlinearity (GPT-2: gelu)", choices=list(ACTIVATIONS))
    position: str | None = option(None, "position information: a learned table (GPT-2), rotary, or none",
                                  choices=list(POSITIONS))
    bias: bool | None = option(None, "biases in the linear layers and norms (GPT-2)")
    tie_embeddings: bool | None = option(None, "share the token embedding with the output layer (GPT-2)")
    qk_norm: bool | None = option(None, "RMSNorm of the queries and keys of every head (GPT-2: none)")
    moe_experts: int | None = option(None, "experts per MLP (GPT-2: 0, a dense MLP)")
    moe_top_k: int | None = option(None, "experts each token is sent to (default 1)")
    moe_aux_weight: float | None = option(None, "weight of the MoE load-balancing loss (default 0.01)")

    def architecture(self) -> dict:
        """The switches that were set, as GPTConfig keyword arguments."""
        return {f.name: getattr(self, f.name) for f in fields(ArchitectureOptions) if getattr(self, f.name) is not None}


@dataclass
class ModelOptions(ArchitectureOptions):
    """The model a fresh run builds: a preset, its architecture switches, its vocabulary padding."""

    model: str = option("tiny", "model preset for a fresh model", choices=list(PRESETS))
    pad_vocab: bool = option(True, f"a fresh model's embedding and output tables get rows up to a multiple of "
                                   f"{VOCAB_PADDING} (faster GPU matmuls; never predicted, cropped on export)")


@dataclass
class RunOptions:
    """Where a training run writes and how it starts: run directory, resume, seed, device."""

    output_dir: Path = option(Path("runs/pretrain"), "run directory: log and checkpoints (and samples, where the run "
                                                     "makes them)")
    resume: str | None = option(None, "continue a run: --resume (its latest checkpoint) or --resume CHECKPOINT_DIR",
                                const="latest", metavar="DIR")
    seed: int = option(1337, "random seed")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    # NCCL's default of 10 minutes stops a run whose rank 0 writes a multi-GB checkpoint to slow storage while the
    # other ranks wait in the next collective
    dist_timeout_minutes: float = option(30.0, "under torchrun: minutes a rank waits for the others in a collective "
                                               "(while rank 0 writes a checkpoint, say) before the run fails")

    def __post_init__(self) -> None:
        require(self, ("dist_timeout_minutes",), lambda v: v > 0, "positive")
        self.output_dir = Path(self.output_dir)


@dataclass
class OptimOptions:
    """How the weights move: optimizer, learning rates and their schedule, weight decay, clipping."""

    optimizer: str = option("adamw", "optimizer", choices=["adamw", "muon"])
    learning_rate: float = option(6e-4, f"peak learning rate of AdamW (with Muon: of {ADAMW_BESIDE_MUON})")
    muon_lr: float = option(0.02, "peak learning rate of Muon's hidden matrices")
    warmup_iters: int = option(0, "steps of linear warmup")
    warmdown_iters: int = option(0, "steps of linear decay to zero at the end (trapezoid schedule)")
    schedule: str = option("trapezoid", "learning-rate schedule", choices=["trapezoid", "cosine"])
    weight_decay: float = option(0.1, "decoupled weight decay of 2-D weights")
    beta1: float = option(0.9, "AdamW beta1")
    beta2: float = option(0.95, "AdamW beta2")
    grad_clip: float = option(1.0, "clip the gradient norm to this (0: no clipping)")

    def __post_init__(self) -> None:
        require(self, ("warmup_iters", "warmdown_iters", "weight_decay", "grad_clip"), lambda v: v >= 0, ">= 0")
        require(self, ("learning_rate", "muon_lr"), lambda v: v > 0, "positive")
        require(self, ("beta1", "beta2"), lambda v: 0 <= v < 1, "in [0, 1)")


@dataclass
class BatchOptions:
    """What one optimizer step reads: rows per micro-batch, tokens per row, and tokens per step over all ranks."""

    batch_size: int = option(8, "rows per micro-batch on each rank")
    seq_len: int | None = option(None, "tokens per row (default: the model's block size)")
    total_batch_size: int | None = option(None, "tokens per optimizer step over all ranks (default: one micro-batch "
                                          "per rank); reached by gradient accumulation")

    def __post_init__(self) -> None:
        require(self, ("batch_size", "seq_len", "total_batch_size"), lambda v: v >= 1, "at least 1")

    def accumulation(self, seq_len: int, world_size: int) -> int:
        """Micro-steps per optimizer step on rows of `seq_len` tokens."""
        return accumulation_steps(self.total_batch_size, self.batch_size, seq_len, world_size)


@dataclass
class LoopOptions:
    """How long the loop runs and what it does on the way: steps, evaluations, checkpoints, logs, precision."""

    max_steps: int = option(100, "optimizer steps")
    eval_every: int = option(50, "steps between validation-loss evaluations (0: never)")
    eval_iters: int = option(20, "validation batches per evaluation: the first of the val split, the same "
                                 "every time")
    checkpoint_every: int = option(0, "steps between checkpoints (0: only at the end)")
    keep_last: int = option(0, "keep only the newest N checkpoints (0: keep all)")
    log_every: int = option(1, "steps between log records and progress updates")
    dtype: str = option("auto", f"compute dtype: bfloat16 (under autocast), float32, or auto: bfloat16 on CUDA GPUs "
                                f"from Ampere on, and on CPUs with native bfloat16 (AVX512-BF16, AMX) for models of "
                                f"width (n_embd) {CPU_BF16_MIN_WIDTH} and more, where it measured faster; float32 "
                                f"elsewhere", choices=["auto", "float32", "bfloat16"])
    compile: bool | None = option(None, "torch.compile each transformer block (one compiled code for all of them; "
                                        f"default: where it measured faster, runs of {AUTO_COMPILE_MIN_STEPS} steps "
                                        "or more on token windows through a dense model in bfloat16 in one CPU "
                                        "process, when a C++ compiler is found)")
    parallel: str = option("ddp", "how torchrun's ranks share the model: ddp (each holds all of it) or fsdp (FSDP2: "
                                  "parameters, gradients and optimizer state sharded across them, for models whose "
                                  "training state does not fit one GPU)", choices=["ddp", "fsdp"])
    activation_checkpointing: bool = option(False, "recompute each block's activations in the backward pass: "
                                                   "about a third more compute for far less memory")
    wandb: bool = option(False, "also log to Weights & Biases (needs `pip install wandb`)")
    wandb_project: str = option("ghoul", "W&B project name")

    def __post_init__(self) -> None:
        require(self, ("max_steps", "eval_iters", "log_every"), lambda v: v >= 1, "at least 1")
        require(self, ("eval_every", "checkpoint_every", "keep_last"), lambda v: v >= 0, ">= 0")


@dataclass
class HellaswagOptions:
    """HellaSwag accuracy during training."""

    hellaswag_every: int = option(0, "steps between HellaSwag evaluations (0: never)")
    hellaswag_limit: int | None = option(None, "score only the first N HellaSwag examples")
    hellaswag_path: Path | None = option(None, "HellaSwag jsonl file (default: the cache or GHOUL_DATA_DIR)")

    def __post_init__(self) -> None:
        require(self, ("hellaswag_limit",), lambda v: v >= 1, "at least 1")
        require(self, ("hellaswag_every",), lambda v: v >= 0, ">= 0")


@dataclass
class SampleOptions:
    """Samples written to samples.jsonl during training."""

    sample_every: int = option(0, "steps between samples written to samples.jsonl (0: never)")
    sample_prompt: str = option("", "prompt for the samples (empty: start from <|endoftext|>)")
    sample_tokens: int = option(64, "tokens per sample")

    def __post_init__(self) -> None:
        require(self, ("sample_tokens",), lambda v: v >= 1, "at least 1")
        require(self, ("sample_every",), lambda v: v >= 0, ">= 0")


def check_training(stage: Any) -> None:
    """The checks across a trainer's groups: its schedule fits its steps, and no option is given for an optimizer or
    schedule other than the chosen one (it would be silently ignored). An off switch (--eval-every 0, --no-wandb)
    leaves its details unread without an error: turning a feature off keeps a config file's settings for it valid."""
    optim, loop = stage.optim, stage.loop
    warmdown = optim.warmdown_iters if optim.schedule == "trapezoid" else 0
    if optim.warmup_iters + warmdown > loop.max_steps:
        raise GhoulError(f"--warmup-iters ({optim.warmup_iters}) + --warmdown-iters ({optim.warmdown_iters}) "
                         f"exceed --max-steps ({loop.max_steps})")
    defaults = member_defaults(stage, "optim")
    if optim.optimizer != "muon":
        refuse_set(optim, ("muon_lr",), "--optimizer muon", defaults)
    if optim.schedule != "trapezoid":
        refuse_set(optim, ("warmdown_iters",), "--schedule trapezoid", defaults)


def dataset_option() -> Any:
    return option("", "prepared token shards: a directory made by `ghoul prepare` (required)", metavar="DIR")


def check_dataset(dataset: str, output_dir: Path) -> None:
    if not dataset:
        raise GhoulError("--dataset is required: a directory of token shards made by `ghoul prepare`")
    if Path(dataset).resolve() == Path(output_dir).resolve():  # the run's files would lie among the shards
        raise GhoulError(f"--output-dir {output_dir} is the --dataset: give the run a directory of its own")


@dataclass
class TrainConfig:
    """`ghoul pretrain`: a fresh model on token shards."""

    dataset: str = dataset_option()
    run: RunOptions = group(RunOptions)
    arch: ModelOptions = group(ModelOptions)
    optim: OptimOptions = group(OptimOptions)
    batch: BatchOptions = group(BatchOptions)
    loop: LoopOptions = group(LoopOptions)
    hellaswag: HellaswagOptions = group(HellaswagOptions)
    sample: SampleOptions = group(SampleOptions)

    def __post_init__(self) -> None:
        check_training(self)
        check_dataset(self.dataset, self.run.output_dir)


def accumulation_steps(total_batch_size: int | None, batch_size: int, seq_len: int, world_size: int) -> int:
    """Micro-steps per optimizer step, so that total = batch_size * seq_len * world_size * steps."""
    per_step = batch_size * seq_len * world_size
    if total_batch_size is None:
        return 1
    if total_batch_size % per_step != 0:
        raise GhoulError(f"--total-batch-size {total_batch_size:,} is not a multiple of batch_size * seq_len * "
                         f"world_size = {batch_size} * {seq_len} * {world_size} = {per_step:,}: change one of them "
                         f"(e.g. --total-batch-size {max(1, round(total_batch_size / per_step)) * per_step})")
    return total_batch_size // per_step


def train_option(name: str) -> Any:
    """The training loop's option `name` as a field of another stage's config (learn, pipeline): its default, help
    and choices declared once."""
    f = next(f for f in fields(LoopOptions) if f.name == name)
    return option(f.default, f.metadata["help"], choices=f.metadata["choices"])
