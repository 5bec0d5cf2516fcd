"""Where the code runs: one process on cpu/mps/cuda, or one of many under torchrun (DDP over NCCL or gloo).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them there is one process and no process group.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from ghoul.errors import GhoulError


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"
    # a process group runs: torchrun started this process, even as its only rank; the trainer then wraps the model
    # in DDP, so that one GPU under torchrun runs NCCL, DDP and its collectives as eight do
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, samples and checkpoints."""
        return self.rank == 0

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type


@dataclass(frozen=True)
class GPU:
    match: str  # a substring of torch.cuda.get_device_name() that identifies the card
    bf16_flops: float  # dense (no sparsity) bf16 tensor-core peak, FP32 accumulate, FLOP/s
    memory_gb: float  # on-board memory, as the data sheet states it

    def peak_flops(self, dtype: str) -> float:
        """Peak FLOP/s when training in `dtype`: float16 runs at the bf16 rate; float32 uses TF32 at half of it."""
        return self.bf16_flops if dtype in ("bfloat16", "float16") else self.bf16_flops / 2


# The one GPU table: MFU in training (peak_flops) and `ghoul plan` (memory, time) both read it. Figures from the
# vendors' data sheets; "dense" is half the "with sparsity" figure those sheets lead with.
GPUS: dict[str, GPU] = {
    "h200": GPU("H200", 989e12, 141),  # H200 SXM data sheet: BF16 1,979 TFLOPS sparse, 141 GB HBM3e
    "h200-nvl": GPU("H200 NVL", 835e12, 141),  # H200 NVL (same data sheet): BF16 1,671 TFLOPS sparse, 141 GB
    "h100": GPU("H100", 989e12, 80),  # H100 SXM data sheet: BF16 1,979 TFLOPS sparse, 80 GB HBM3
    "h100-pcie": GPU("H100 PCIe", 756e12, 80),  # H100 PCIe (same data sheet): BF16 1,513 TFLOPS sparse, 80 GB HBM2e
    "h100-nvl": GPU("H100 NVL", 835e12, 94),  # H100 NVL (same data sheet): BF16 1,671 TFLOPS sparse, 94 GB HBM3
    "gh200": GPU("GH200", 989e12, 96),  # GH200 data sheet: the H100 SXM's BF16 1,979 TFLOPS sparse, 96 GB HBM3
    "a100-80gb": GPU("A100", 312e12, 80),  # A100 data sheet: BF16 312 TFLOPS dense, 40 or 80 GB HBM2e
    "a100-40gb": GPU("A100", 312e12, 40),  # same chip; get_device_name does not tell the two apart for MFU
    "l40s": GPU("L40S", 362e12, 48),  # L40S data sheet: BF16 733 TFLOPS sparse, 48 GB GDDR6
    "l40": GPU("L40", 181e12, 48),  # L40 data sheet: BF16 362.1 TFLOPS sparse, 48 GB GDDR6
    "a10": GPU("A10", 125e12, 24),  # A10 data sheet: BF16 125 TFLOPS dense, 24 GB GDDR6
    # the A10's figures: AWS's A10G variant is not published by NVIDIA and may run lower clocks
    "a10g": GPU("A10G", 125e12, 24),
    "l4": GPU("L4", 121e12, 24),  # L4 data sheet: BF16 242 TFLOPS sparse, 24 GB GDDR6
    "rtx4090": GPU("4090", 165e12, 24),  # Ada Lovelace whitepaper, RTX 4090: BF16/FP32-accumulate 165.2 dense, 24 GB
    "rtx3090": GPU("3090", 71e12, 24),  # Ampere GA102 whitepaper, RTX 3090: BF16/FP32-accumulate 71 dense, 24 GB
    # RTX A6000 data sheet: Tensor Performance 309.7 TFLOPS sparse, 48 GB GDDR6; the GA102 whitepaper gives BF16 at
    # the full rate with FP32 accumulate (154.8 dense), which the GeForce 3090 halves
    "a6000": GPU("A6000", 155e12, 48),
}


def gpu_named(name: str) -> GPU | None:
    """The GPU of the table that a device name (`torch.cuda.get_device_name`) is: of the `match` strings found in it
    as whole words, the longest, so that an "H100 PCIe" is not taken for an SXM "H100", nor an "L40" for an "L4"
    or an "A100" for an "A10"; None when none is."""
    found = [gpu for gpu in GPUS.values()
             if re.search(rf"(?<![a-z0-9]){re.escape(gpu.match)}(?![a-z0-9])", name, re.IGNORECASE)]
    return max(found, key=lambda gpu: len(gpu.match), default=None)


def peak_flops(device: str, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of a CUDA device when its name is known (for MFU); None on CPUs and unknown GPUs."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "MIG" in name:  # a slice of the GPU ("H100 ... MIG 3g.40gb"): its share of the peak is not known here
        return None
    gpu = gpu_named(name)
    return None if gpu is None else gpu.peak_flops(dtype)


def default_device() -> str:
    """The best device this machine has: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_device(device: str = "auto") -> str:
    """`--device` checked against this machine: auto means default_device(); a device that is missing is an error."""
    if device == "auto":
        return default_device()
    try:
        kind = torch.device(device)
    except RuntimeError:
        raise GhoulError(f"unknown --device '{device}': use cpu, cuda, cuda:N, mps, or auto") from None
    if kind.type == "cuda" and not torch.cuda.is_available():
        raise GhoulError(f"--device {device}: this machine has no CUDA GPU that torch can use; use cpu or auto")
    if kind.type == "cuda" and kind.index is not None and kind.index >= torch.cuda.device_count():
        raise GhoulError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise GhoulError(f"--device {device}: MPS is not available here; use cpu or auto")
    if kind.type not in ("cpu", "cuda", "mps"):
        raise GhoulError(f"--device {device}: ghoul runs on cpu, cuda and mps")
    return device


# torchrun (torch.distributed.run) sets these for every process it starts, a single one included
TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def setup(device: str = "auto", timeout_minutes: float | None = None) -> DistInfo:
    """Read torchrun's environment and start the process group (NCCL on CUDA, gloo otherwise) whenever torchrun
    started this process; `timeout_minutes` is how long a collective waits for the other ranks before it fails
    (None: torch's default, 10 minutes for NCCL). Without torchrun: one process, no process group."""
    device = resolve_device(device)
    if not all(name in os.environ for name in TORCHRUN_ENV):
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)  # the current device is the one trained on: the RNG state it saves
        return DistInfo(device=device)
    rank, local_rank, world_size = (int(os.environ[name]) for name in TORCHRUN_ENV)
    if device.startswith("cuda"):
        if local_rank >= torch.cuda.device_count():  # else "invalid device ordinal", deep in CUDA
            raise GhoulError(f"torchrun started local rank {local_rank}, but this process sees "
                             f"{torch.cuda.device_count()} CUDA GPU(s): start at most that many processes per node "
                             f"(--nproc_per_node), and give each process every GPU of the node (CUDA_VISIBLE_DEVICES)")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        timeout = None if timeout_minutes is None else timedelta(minutes=timeout_minutes)
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo", timeout=timeout)
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device, distributed=True)


@contextlib.contextmanager
def started(device: str = "auto", timeout_minutes: float | None = None) -> Iterator[DistInfo]:
    """This process started as `setup` does, and its process group destroyed at the end: a process that exits with
    one alive may abort in gloo's threads as Python shuts down. On success the ranks first meet, so that none tears
    the group down while another still talks to it."""
    d = setup(device, timeout_minutes)
    try:
        yield d
        barrier()
    finally:
        if in_process_group():
            dist.destroy_process_group()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: str | torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes; float32 means none. Losses are reduced in float32 regardless."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choices: {', '.join(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


# CPU feature flags, as torch.cpu.get_capabilities() and Linux's /proc/cpuinfo name them, of native bfloat16 dot
# products: AVX512-BF16 (Intel Cooper Lake, AMD Zen 4 and later) and AMX-BF16 (Intel Sapphire Rapids and later)
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# `--dtype auto` trains in bfloat16 on such CPUs from this model width (n_embd) up. Measured on a Zen 4 core
# (benchmarks/RESULTS.md; one thread, 6 layers, heads of 32, batch 16 x 256): the bfloat16 step ran at 0.97x the
# float32 step's speed at width 32, 1.17x and 1.24x at 64 and 96 (unsteady on a shared machine), 1.39x at 128 and
# 192, 1.43x at 256 and 1.59x at 384. Narrower models spend less of the step in the matrix products that bfloat16
# speeds up (torch.profiler: 41% of the float32 step at width 32, 65% at 192).
CPU_BF16_MIN_WIDTH = 128


def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """This CPU's feature flags: torch's cpuinfo report where torch has one, else the flags line of `cpuinfo`
    (Linux); none when neither says."""
    capabilities = getattr(torch.cpu, "get_capabilities", None)  # newer torch only (pytorch/pytorch#171095)
    if capabilities is not None:
        return frozenset(name for name, value in capabilities().items() if value is True)
    try:
        with open(cpuinfo, encoding="utf-8") as f:
            return next((frozenset(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")),
                        frozenset())
    except OSError:
        return frozenset()


def fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 matmuls run natively: Ampere and newer GPUs; CPUs with AVX512-BF16 or AMX. Elsewhere they
    are emulated, slower than float32: a training step of the `laptop` model took 1.9x the float32 step's time with
    oneDNN held to AVX-512 without BF16, and 9x with AVX2 only (benchmarks/RESULTS.md)."""
    kind = torch.device(device).type
    if kind == "cuda":
        # bfloat16 tensor cores came with Ampere (compute capability 8.0); torch.cuda.is_bf16_supported() also
        # says yes to older GPUs that emulate it
        return torch.cuda.get_device_capability(device)[0] >= 8
    if kind == "cpu":
        return bool(CPU_BF16_FLAGS & cpu_flags()) and onednn_bfloat16()
    return True


def onednn_bfloat16() -> bool:
    """oneDNN's own bfloat16 check: it says yes to any AVX-512 CPU, which emulates bfloat16 (so the CPU's flags are
    read too), but no where oneDNN may not use the instructions (ONEDNN_MAX_CPU_ISA=AVX2, a build without oneDNN)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_dtype(dtype: str, device: str | torch.device, n_embd: int | None = None) -> str:
    """`auto` is bfloat16 autocast where it trains faster than float32, float32 elsewhere: on CUDA GPUs that run it
    natively (Ampere and newer), as nanoGPT-style trainers default to, and on CPUs that do (fast_bfloat16) for models
    of width `n_embd` >= CPU_BF16_MIN_WIDTH; narrower or unknown widths, other CPUs and MPS keep float32."""
    if dtype != "auto":
        return dtype
    kind = torch.device(device).type
    wide = n_embd is not None and n_embd >= CPU_BF16_MIN_WIDTH
    return "bfloat16" if (kind == "cuda" or (kind == "cpu" and wide)) and fast_bfloat16(device) else "float32"


# Compiling the default run's blocks into an empty cache took about 40 s on 2 cores: about what 500 of its bfloat16
# steps save (70 ms each). Shorter runs (the learning stage's 300 steps) stay eager unless --compile asks.
AUTO_COMPILE_MIN_STEPS = 500


def resolve_compile(compile: bool | None, d: DistInfo, dtype: str, fixed_shapes: bool, steps: int) -> bool:
    """`None` (auto) compiles where it was measured to pay: bfloat16 training in one CPU process, where the compiled
    blocks fuse autocast's casts with the element-wise work around the matrix products (the default run trained
    1.44x as fast), for runs of at least AUTO_COMPILE_MIN_STEPS steps whose shapes stay fixed, when inductor finds a
    C++ compiler. Float32 on the CPU trained no faster. Shapes that change from step to step compile anew: pairs of
    changing lengths (DPO, reward models), and the tokens a mixture of experts routes to each expert (a 20-step MoE
    run spent 70 s compiling). GPUs and distributed runs compile when asked (`--compile`)."""
    if compile is not None:
        return compile
    cpu = torch.device(d.device).type == "cpu" and not d.distributed
    long_enough = fixed_shapes and steps >= AUTO_COMPILE_MIN_STEPS
    return cpu and long_enough and dtype == "bfloat16" and cpp_compiler_found()


def cpp_compiler_found() -> bool:
    """Whether torch.compile can build CPU code here: inductor compiles C++ with $CXX, or g++ (clang++ on macOS)."""
    try:  # inductor takes a second to import (torch's compiler): only where auto may compile
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception:  # no compiler (InvalidCxxCompiler), or a torch built without inductor
        return False
    return True


def allow_tf32() -> None:
    """float32 matmuls and convolutions on CUDA's TF32 tensor cores (Ampere and newer): several times the FLOP/s at
    10 mantissa bits, which training, evaluation and sampling tolerate, as nanoGPT-style tools assume. CPUs are not
    affected."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True


def to_device(t: torch.Tensor, device: str | torch.device) -> torch.Tensor:
    """A batch built on the CPU, copied to `device`: to a GPU from pinned memory without waiting, so that the copy
    runs beside the work still queued there (a plain copy to a GPU waits for all of it)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def synchronize(device: str | torch.device) -> None:
    """Wait for the work queued on `device` (CUDA runs it asynchronously; a CPU has none queued)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_gib(device: str | torch.device) -> float | None:
    """The most memory tensors took on a CUDA device since the previous call, in GiB (the count then restarts);
    None elsewhere. What `ghoul plan` estimates; the CUDA context and the allocator's cache come on top."""
    if torch.device(device).type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated(device) / 2**30
    torch.cuda.reset_peak_memory_stats(device)
    return peak


def grads_to_none(model: torch.nn.Module) -> bool:
    """Whether `zero_grad` may free the gradients (set them to None): yes, except in a model wrapped in DDP, whose
    gradients are views of its communication buckets (gradient_as_bucket_view). Freed, they come back during the
    `no_sync` micro-steps of gradient accumulation as new full-size tensors beside the buckets, a second copy, as
    DistributedDataParallel's docstring warns; zeroed in place they stay in the buckets."""
    return not isinstance(model, DistributedDataParallel)


def in_process_group() -> bool:
    """Whether this process is one rank of a running process group (started by torchrun)."""
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if in_process_group():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (itself when there is one process)."""
    if in_process_group():
        return all_reduce_total(value) / dist.get_world_size()
    return value


def all_reduce_total(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over all ranks (itself when there is one process)."""
    if in_process_group():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value


def process_rank() -> int:
    """This process's rank in the running process group; 0 without one."""
    return dist.get_rank() if in_process_group() else 0


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` of every rank, in rank order (`[obj]` in one process); every rank must call it."""
    if not in_process_group():
        return [obj]
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, obj)
    return parts


def all_reduce_sum(values: list[float], device: str | torch.device) -> list[float]:
    """Sum `values` over the ranks when torch.distributed is running; unchanged otherwise."""
    if not in_process_group():
        return values
    # NCCL reduces only CUDA tensors, gloo only CPU ones: the tensor lives on the model's device
    return all_reduce_total(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)
