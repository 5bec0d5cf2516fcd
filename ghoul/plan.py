"""`ghoul plan`: memory per GPU, FLOPs, hours and cost of a data-parallel training run, before you rent the GPUs.

Everything is closed-form arithmetic on the model preset (tests check the formulas against the model itself), so it
runs in a blink on any machine. The memory figures are for eager PyTorch as `ghoul pretrain` runs it: DDP (a full
replica per GPU) or FSDP2 (parameters, gradients and optimizer state sharded over the GPUs, each block all-gathered
as it runs), optional bf16 autocast, fused AdamW or Muon, PyTorch's SDPA attention. The total is the peak
of the tensors a training step holds; measured on the CPU (tiny, small, gpt2-medium; float32 and bfloat16;
AdamW and Muon; with and without activation checkpointing; see tests/test_plan.py) it came within 0.5% below and
3.5% above it under DDP; for one rank of a two-rank FSDP run (small), 2-3% above it in float32, 8% with activation
checkpointing and 10% under bfloat16 autocast (the logits, the prefetched block and the gradient buffers are counted
at once, where the step holds them one after the other).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ghoul.config import option, require
from ghoul.dist import GPUS
from ghoul.errors import GhoulError
from ghoul.model import PRESETS, VOCAB_PADDING, GPTConfig, vocab_padding
from ghoul.train.config import accumulation_steps

GiB = 2**30
DTYPES = {"float32": 4, "bfloat16": 2}  # bytes of one activation element, in the dtypes the trainers take
OPTIMIZERS = ("adamw", "muon")
PARALLEL = ("ddp", "fsdp")
SHARDED = ("weights", "gradients", "optimizer state")  # the memory terms FSDP divides over the GPUs
# Room for what no formula here counts: the CUDA context (about 0.5 GiB), cuBLAS and NCCL workspaces, and the
# allocator's fragmentation; also covers a data-sheet "80 GB" being 79.6 GiB (81,559 MiB in nvidia-smi on an H100).
RESERVE_GIB = 2.0
BATCH_SEARCH_LIMIT = 1024  # micro-batches tried for "the largest that fits"


@dataclass
class PlanConfig:
    model: str = option("gpt2-xl", f"model preset: {', '.join(PRESETS)}")
    gpus: int = option(8, "GPUs: each holds a full replica (ddp) or a 1/gpus shard of the model (fsdp)")
    gpu: str = option("h100", f"GPU kind: {', '.join(GPUS)}")
    total_batch_size: int = option(491_520, "tokens per optimizer step, over all GPUs and accumulation steps")
    batch_size: int = option(12, "sequences per GPU per forward/backward (micro-batch)")
    seq_len: int | None = option(None, "tokens per sequence (default: the model's context, as `ghoul pretrain`)")
    max_steps: int = option(15_258, "optimizer steps")
    dtype: str = option("bfloat16", f"autocast dtype: {', '.join(DTYPES)} (float32: none, TF32 matmuls)")
    optimizer: str = option("adamw", f"optimizer: {', '.join(OPTIMIZERS)}")
    parallel: str = option("ddp", "ddp: a full replica per GPU; fsdp: parameters, gradients and optimizer state "
                                  "sharded over the GPUs (FSDP2), as `ghoul pretrain --parallel`",
                           choices=list(PARALLEL))
    activation_checkpointing: bool = option(False, "keep only each layer's input; recompute the rest in backward")
    pad_vocab: bool = option(True, f"embedding and output tables padded to a multiple of {VOCAB_PADDING} rows, as "
                                   "`ghoul pretrain` does by default")
    mfu: float = option(0.45, "model FLOPs utilisation to assume for the time (0.45: a well-tuned H100 run)")
    price_per_gpu_hour: float | None = option(None, "price of one GPU-hour, for the cost line")

    def __post_init__(self) -> None:
        for name, known, listed in (("model", PRESETS, "presets"), ("gpu", GPUS, "known"), ("dtype", DTYPES, "choices"),
                                    ("optimizer", OPTIMIZERS, "choices")):
            if getattr(self, name) not in known:
                raise GhoulError(f"unknown {name} '{getattr(self, name)}'; {listed}: {', '.join(known)}")
        require(self, ("gpus", "total_batch_size", "batch_size", "seq_len", "max_steps"), lambda v: v > 0, "positive")
        require(self, ("parallel",), lambda v: v in PARALLEL, " or ".join(PARALLEL))  # for callers without the CLI
        if not 0 < self.mfu <= 1:
            raise GhoulError(f"--mfu is a fraction of the peak in (0, 1], got {self.mfu}")
        require(self, ("price_per_gpu_hour",), lambda v: v >= 0, ">= 0")
        block = PRESETS[self.model].get("block_size", GPTConfig.block_size)
        self.seq_len = self.seq_len or block
        if self.seq_len > block:
            raise GhoulError(f"--seq-len {self.seq_len} exceeds {self.model}'s context of {block} tokens")
        accumulation_steps(self.total_batch_size, self.batch_size, self.seq_len, self.gpus)  # as the trainer checks


def param_counts(c: GPTConfig) -> dict[str, int]:
    """Parameters of a GPT-2-style model by role, as ghoul.optim.build.split_params groups them:
    `matrices` (Muon's), `embeddings` (token and position tables, an untied head), `gains` (norm gains, biases);
    and `root`, those outside the blocks (embeddings, ln_f): FSDP's root unit, as ghoul.train.fsdp shards it."""
    C, L = c.n_embd, c.n_layer
    hidden = 2 * (4 * C) // 3 if c.activation == "swiglu" else 4 * C  # as model.MLP: SwiGLU keeps 8C^2 weights
    fc_out = 2 * hidden if c.activation == "swiglu" else hidden  # SwiGLU's c_fc holds the gate and the up half
    matrices = L * (4 * C * C + C * fc_out + hidden * C)  # c_attn C x 3C, attn c_proj C x C, c_fc, mlp c_proj
    embeddings = c.padded_vocab_size * C * (1 if c.tie_embeddings else 2)  # wte, and lm_head when untied
    embeddings += c.block_size * C if c.position == "learned" else 0  # wpe
    norm = 2 * C if c.bias and c.norm == "layernorm" else C  # a LayerNorm's gain and bias; RMSNorm has a gain only
    biases = 3 * C + C + fc_out + C if c.bias else 0  # c_attn, attn c_proj, c_fc, mlp c_proj
    qk_norms = 2 * (C // c.n_head) if c.qk_norm else 0  # one RMSNorm gain over the head size for q, one for k
    gains = L * (2 * norm + biases + qk_norms) + norm  # two norms per layer, and ln_f
    return {"matrices": matrices, "embeddings": embeddings, "gains": gains,
            "total": matrices + embeddings + gains, "root": embeddings + norm}


def flops_per_token(c: GPTConfig, seq_len: int) -> int:
    """Training FLOPs per token: 6 per weight used in a matmul (2 forward, 4 backward; Kaplan et al. 2020, 2.1)
    plus attention's 12 * L * T * C (PaLM, Chowdhery et al. 2022, appendix B). The position table is a lookup."""
    n = param_counts(c)["total"]
    lookups = (c.block_size * c.n_embd if c.position == "learned" else 0) + (
        0 if c.tie_embeddings else c.padded_vocab_size * c.n_embd)
    return 6 * (n - lookups) + 12 * c.n_layer * seq_len * c.n_embd


def activation_bytes_per_token(c: GPTConfig, act: int) -> int:
    """Bytes one layer keeps for backward per token, counted tensor by tensor as in Korthikanti et al. 2022,
    "Reducing Activation Recomputation in Large Transformer Models", section 4.1 (34*s*b*h + 5*a*s^2*b in 16 bits).

    Changes from the paper: PyTorch's SDPA (flash / memory-efficient kernels, Dao et al. 2022) keeps no s x s
    attention matrix, only a float32 log-sum-exp per head (the 5*a*s^2*b term becomes 4*a*s*b); under autocast the
    residual stream and the LayerNorms stay float32, so the two LayerNorm inputs take 4 bytes each; dropout masks
    (1 byte) only when dropout is on."""
    h = c.n_embd
    norms = 2 * 4 * h  # inputs of ln_1 and ln_2 (float32 residual stream)
    attention = act * (h + 3 * h + h)  # c_attn input; q, k, v; SDPA output = attn c_proj input
    lse = 4 * c.n_head  # SDPA's float32 log-sum-exp, one per head
    mlp = act * (h + 4 * h + 4 * h)  # c_fc input; GELU input; GELU output = mlp c_proj input
    masks = 2 * h if c.dropout > 0 else 0  # attention-output and MLP-output dropout masks, 1 byte each
    return norms + attention + lse + mlp + masks


def estimate(cfg: PlanConfig) -> dict:
    """Every figure of the plan, in bytes, FLOPs, seconds and counts (`run` prints them)."""
    c = GPTConfig.from_name(cfg.model, vocab_padding=vocab_padding(cfg.pad_vocab))
    gpu = GPUS[cfg.gpu]
    params = param_counts(c)
    accum = accumulation_steps(cfg.total_batch_size, cfg.batch_size, cfg.seq_len, cfg.gpus)
    memory = memory_terms(cfg, c, params, accum)
    total = peak_memory(memory, params, cfg, accum)
    usable = gpu.memory_gb * GiB - RESERVE_GIB * GiB

    fpt = flops_per_token(c, cfg.seq_len)
    steps_tokens = cfg.max_steps * cfg.total_batch_size
    peak = gpu.peak_flops(cfg.dtype)
    seconds = fpt * steps_tokens / (cfg.gpus * peak * cfg.mfu)
    hours = seconds / 3600
    return {
        "model": cfg.model, "gpu": cfg.gpu, "gpus": cfg.gpus, "params": params, "vocab_rows": c.padded_vocab_size,
        "memory": memory,
        "memory_total": total, "gpu_memory": gpu.memory_gb * GiB, "usable_memory": usable, "fits": total <= usable,
        "grad_accum_steps": accum, "communication": communication(params, DTYPES[cfg.dtype], cfg.gpus, accum),
        "flops_per_token": fpt, "flops_per_step": fpt * cfg.total_batch_size, "total_flops": fpt * steps_tokens,
        "tokens": steps_tokens, "peak_flops": peak, "seconds": seconds, "hours": hours,
        "seconds_per_step": seconds / cfg.max_steps, "tokens_per_second": steps_tokens / seconds,
        "gpu_hours": hours * cfg.gpus,
        "cost": None if cfg.price_per_gpu_hour is None else hours * cfg.gpus * cfg.price_per_gpu_hour,
    }


def memory_terms(cfg: PlanConfig, c: GPTConfig, params: dict[str, int], accum: int) -> dict[str, int]:
    """What one GPU holds during a step, term by term, in bytes (peak_memory says which of them coexist): the
    training state, what FSDP gathers, and what backward needs of the micro-batch."""
    n, act, fsdp = params["total"], DTYPES[cfg.dtype], cfg.parallel == "fsdp"

    def shard(size: int) -> int:
        # FSDP: each GPU holds 1/gpus of the rows of every tensor, padded to a multiple of the GPU count: nothing for
        # GPT-2's sizes on 2, 4 or 8 GPUs, less than a row per tensor otherwise (megabytes), not counted
        return -(-size // cfg.gpus) if fsdp else size
    memory = {"weights": shard(4 * n)}  # float32 master weights, also under autocast
    if not fsdp:
        # autocast casts each weight once per forward and caches the copy; matmuls save it for backward
        memory["autocast weight copies"] = act * n if act < 4 else 0
    # float32, like the weights they belong to; under DDP they are views into its communication buckets
    # (gradient_as_bucket_view), so the buckets add nothing
    memory["gradients"] = shard(4 * n)
    # AdamW: exp_avg and exp_avg_sq in float32; Muon: one momentum buffer for hidden matrices, AdamW for the rest
    memory["optimizer state"] = shard(8 * n if cfg.optimizer == "adamw" else 8 * n - 4 * params["matrices"])
    # FSDP gathers the parameters in the autocast dtype (ghoul.train.fsdp's MixedPrecisionPolicy), and backward makes
    # their gradients in it; DDP's weights and gradients stay float32
    gathered = act if fsdp else 4
    if fsdp:
        memory |= fsdp_memory(c, params, gathered, accum)
    return memory | backward_memory(cfg, c, gathered)


def backward_memory(cfg: PlanConfig, c: GPTConfig, gathered: int) -> dict[str, int]:
    """What backward needs of one micro-batch beside the training state: its activations, the logits, and the whole
    gradient of the output layer (under FSDP also of the embedding), in `gathered` bytes per element."""
    act, tokens = DTYPES[cfg.dtype], cfg.batch_size * cfg.seq_len  # tokens in one GPU's forward
    layer = activation_bytes_per_token(c, act) * tokens
    if cfg.activation_checkpointing:
        # only each layer's float32 input is saved; backward recomputes one layer at a time, holding its activations
        kept = c.n_layer * 4 * c.n_embd * tokens + layer
    else:
        kept = c.n_layer * layer
    memory = {
        "activations": kept + (4 + act) * c.n_embd * tokens,  # and the ln_f input (float32) and lm_head input
        # the loss (ghoul.cross_entropy) at its peak holds the float32 logits and, under autocast, the gradient it
        # keeps for backward in the autocast dtype: the logits never stay
        "logits": (4 + (act if act < 4 else 0)) * c.padded_vocab_size * tokens,
        # backward's first product: the output layer's weight gradient (FSDP: unsharded, in the gathered dtype),
        # held until the token embedding (tied to it) adds its share at the very end
        "output-layer gradient": gathered * c.padded_vocab_size * c.n_embd,
    }
    if cfg.parallel == "fsdp":
        # at the very end the token embedding's own gradient and (tied) their sum: two tables more, for a moment
        memory["embedding gradient"] = (2 if c.tie_embeddings else 1) * gathered * c.padded_vocab_size * c.n_embd
    return memory


def peak_memory(memory: dict[str, int], params: dict[str, int], cfg: PlanConfig, accum: int) -> int:
    """The peak of the terms in `memory` over a step: less than their sum where backward frees the activations as it
    makes the gradients."""
    n = params["total"]
    if cfg.parallel == "fsdp":
        # the gradient shards arrive as backward frees the activations, so the peak is at its start (the loss's
        # backward: all activations, the logits, the gradients of accumulation) or at its end (the embedding's
        # backward: the blocks' gradient shards; the root's comes after it)
        start = memory["activations"] + memory["logits"] + memory["unsharded gradients"]
        end = memory["gradients"] * (n - params["root"]) // n + memory["embedding gradient"]
        return sum(memory.values()) - start - memory["gradients"] - memory["embedding gradient"] + max(start, end)
    if cfg.gpus > 1 or accum > 1:
        # DDP's buckets hold the gradients from start to end, beside the activations; so does gradient accumulation
        # from its second micro-step on
        return sum(memory.values())
    # one process, one micro-step: backward allocates the gradients as it frees the activations, so the peak is the
    # larger of its start and its end
    start = memory["activations"] + memory["logits"] + memory["output-layer gradient"]
    return sum(memory.values()) - start - memory["gradients"] + max(start, memory["gradients"])


def communication(params: dict[str, int], act: int, gpus: int, accum: int) -> dict[str, float]:
    """Bytes each GPU sends per optimizer step (and receives) in NCCL's ring collectives: (gpus - 1) / gpus of the
    buffer for an all-gather or a reduce-scatter, twice that for an all-reduce."""
    n, ring = params["total"], (gpus - 1) / gpus
    return {
        # one all-reduce of the float32 gradients, on the last micro-step (no_sync before it)
        "ddp": 2 * ring * 4 * n,
        # every micro-step all-gathers the blocks for forward and again for backward, the root once (it stays
        # gathered); the float32 gradients are reduce-scattered on the last micro-step only
        "fsdp": ring * (accum * act * (2 * n - params["root"]) + 4 * n),
    }


def fsdp_memory(c: GPTConfig, params: dict[str, int], gathered: int, accum: int) -> dict[str, int]:
    """What FSDP2 holds per GPU beside the shards, as ghoul.train.fsdp wraps the model (a unit per block, the root
    for the rest), with the parameters gathered in `gathered` bytes each. Muon's step gathers one whole matrix at a
    time (41 MB for gpt2-xl): not counted."""
    block = (params["total"] - params["root"]) // c.n_layer
    return {
        # the root (embeddings, ln_f) is gathered at the start of forward and kept until the end of backward
        "root, all-gathered": gathered * params["root"],
        # two at a time, in forward and again in backward: the block running and the next one, gathered ahead
        "blocks, all-gathered": 2 * gathered * block,
        # a block's gradient as backward makes it, and the float32 buffer it is reduce-scattered from
        "block gradient + buffer": (gathered + 4) * block,
        # micro-steps without gradient sync (ghoul.train.fsdp.set_gradient_sync) skip the reduce-scatter: every unit
        # keeps its whole gradient in float32 (the reduce dtype) from the first micro-step to the last, as DDP does
        "unsharded gradients": 4 * params["total"] if accum > 1 else 0,
    }


def largest_batch_sizes(cfg: PlanConfig) -> tuple[int, int]:
    """(the largest --batch-size that fits, up to BATCH_SEARCH_LIMIT, and the largest that also divides
    --total-batch-size into whole accumulation steps); 0 where none does. Memory grows with the micro-batch, so the
    search stops at the first that does not fit."""
    fitting, per_sequence = 0, cfg.seq_len * cfg.gpus
    for batch in range(1, BATCH_SEARCH_LIMIT + 1):
        # as many accumulation steps as the batch leaves room for (at least one): accumulating holds more
        trial = replace(cfg, batch_size=batch,
                        total_batch_size=batch * per_sequence * max(1, cfg.total_batch_size // (batch * per_sequence)))
        if not estimate(trial)["fits"]:
            break
        fitting = batch
    dividing = max((b for b in range(1, fitting + 1) if cfg.total_batch_size % (b * per_sequence) == 0), default=0)
    return fitting, dividing


def _gib(n: float) -> str:
    return f"{n / GiB:8.2f} GiB"


def format_plan(cfg: PlanConfig, e: dict) -> str:
    """The plan as a readable table: the run, memory per GPU, compute, communication, and what to change where it
    does not fit."""
    fitting, dividing = largest_batch_sizes(cfg)
    lines = [*_run_lines(cfg, e), "", *_memory_lines(cfg, e, fitting, dividing), "", *_compute_lines(cfg, e), "",
             *_communication_lines(cfg, e)]
    if not e["fits"]:
        lines.append(_advice(cfg, dividing))
    return "\n".join(lines)


def _run_lines(cfg: PlanConfig, e: dict) -> list[str]:
    p = e["params"]
    ckpt = "on" if cfg.activation_checkpointing else "off"
    return [
        f"model {cfg.model}: {p['total']:,} parameters ({p['matrices']:,} in hidden matrices, "
        f"{p['embeddings']:,} in embeddings of {e['vocab_rows']:,} token rows, {p['gains']:,} in gains and biases)",
        f"run: {cfg.gpus} x {cfg.gpu} ({cfg.parallel}), {cfg.dtype}, {cfg.optimizer}, activation checkpointing {ckpt}; "
        f"{cfg.total_batch_size:,} tokens per step = {cfg.batch_size} x {cfg.seq_len} tokens x {cfg.gpus} GPUs x "
        f"{e['grad_accum_steps']} accumulation steps",
    ]


def _memory_lines(cfg: PlanConfig, e: dict, fitting: int, dividing: int) -> list[str]:
    share = f" (1/{cfg.gpus})" if cfg.parallel == "fsdp" else ""  # each GPU's shard
    lines = ["memory per GPU"]
    lines += [f"  {name + (share if name in SHARDED else ''):24s} {_gib(value)}" for name, value in e["memory"].items()]
    if cfg.parallel == "fsdp":
        lines.append("  (FSDP: the gradient shards arrive as backward frees the activations, and the embedding "
                     "gradient lasts a moment at its end: the peak is the larger of backward's start and end, less "
                     "than the sum)")
    elif cfg.gpus == 1:
        lines.append("  (one GPU, no DDP: the gradients arrive as backward frees the activations, so the peak is less "
                     "than the sum)")
    verdict = "fits" if e["fits"] else "does NOT fit"
    return lines + [
        f"  {'total':24s} {_gib(e['memory_total'])}   {verdict}: {cfg.gpu} has {e['gpu_memory'] / GiB:.0f} GiB, "
        f"{e['usable_memory'] / GiB:.0f} usable after a {RESERVE_GIB:.0f} GiB reserve "
        f"({e['memory_total'] / e['usable_memory']:.0%} of it)",
        (f"  largest --batch-size that fits: {fitting}{'+' if fitting == BATCH_SEARCH_LIMIT else ''}; the largest "
         f"that divides --total-batch-size into whole accumulation steps: {dividing}" if fitting
         else "  no --batch-size fits, not even 1"),
    ]


def _compute_lines(cfg: PlanConfig, e: dict) -> list[str]:
    cost = ("give --price-per-gpu-hour" if e["cost"] is None else
            f"{e['cost']:10,.2f} at {cfg.price_per_gpu_hour} per GPU-hour")
    lines = [
        "compute",
        f"  FLOPs per token          {e['flops_per_token'] / 1e9:10.2f} GFLOP (6N + 12 L T C)",
        f"  FLOPs per step           {e['flops_per_step'] / 1e15:10.2f} PFLOP",
        f"  total                    {e['total_flops']:.3e} FLOPs over {e['tokens'] / 1e9:.2f} B tokens "
        f"({cfg.max_steps:,} steps)",
        f"  at {cfg.mfu:.0%} MFU of {e['peak_flops'] / 1e12:.0f} TFLOP/s per GPU: {e['seconds_per_step']:.2f} s per "
        f"step, {e['tokens_per_second']:,.0f} tokens/s",
        f"  time                     {e['hours']:10.2f} hours ({e['gpu_hours']:,.1f} GPU-hours)",
        f"  cost                     {cost}",
    ]
    if cfg.activation_checkpointing:
        lines.append("  (recomputation adds a forward pass, a third more arithmetic not counted in MFU: expect a lower "
                     "--mfu than without it)")
    return lines


def _communication_lines(cfg: PlanConfig, e: dict) -> list[str]:
    comm = e["communication"]
    return [
        "communication per GPU per step (sent, as much received)",
        f"  fsdp {comm['fsdp'] / 1e9:10.2f} GB: each of the {e['grad_accum_steps']} micro-steps all-gathers the "
        f"parameters for forward and the blocks' again for backward; one reduce-scatter of the gradients",
        f"  ddp  {comm['ddp'] / 1e9:10.2f} GB: one all-reduce of the gradients",
        f"  this run ({cfg.parallel}) needs {comm[cfg.parallel] / e['seconds_per_step'] / 1e9:.1f} GB/s per GPU to "
        f"hide it behind {e['seconds_per_step']:.2f} s of compute per step",
    ]


def _advice(cfg: PlanConfig, dividing: int) -> str:
    """What makes a run that does not fit fit: only suggestions that do."""
    fsdp = cfg.parallel == "fsdp"
    checkpointed = replace(cfg, activation_checkpointing=True)
    works = {"--activation-checkpointing": not cfg.activation_checkpointing and estimate(checkpointed)["fits"],
             f"--batch-size {dividing}": dividing > 0,
             "--parallel fsdp": not fsdp and largest_batch_sizes(replace(checkpointed, parallel="fsdp"))[0] > 0}
    tries = [flag for flag, ok in works.items() if ok]
    if tries:
        return f"\nit does not fit: try {' or '.join(tries)}"
    return "\nit does not fit at any --batch-size: " + (
        "it needs more GPUs, or GPUs with more memory" if fsdp else
        "every GPU holds a whole replica, so it needs GPUs with more memory")


def run(cfg: PlanConfig) -> dict:
    """Print the plan and return its figures."""
    e = estimate(cfg)
    print(format_plan(cfg, e))
    return e
