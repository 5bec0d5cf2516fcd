"""Where the code runs: one process on cpu/mps/cuda, or one of many under torchrun (DDP over NCCL or gloo).

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE; without them there is one process and no process group.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        """Rank 0 writes logs, samples and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def device_type(self) -> str:
        return torch.device(self.device).type


# Dense bf16 peak FLOP/s by GPU name (vendor data sheets); float32 training uses TF32 at half of it.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12, "L4": 121e12,
                   "4090": 165e12, "3090": 71e12}


def peak_flops(device: str, dtype: str = "bfloat16") -> float | None:
    """Peak FLOP/s of a CUDA device when its name is known (for MFU); None on CPUs and unknown GPUs."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, flops in PEAK_BF16_FLOPS.items():
        if key in name:
            return flops if dtype == "bfloat16" else flops / 2
    return None


def default_device() -> str:
    """The best device this machine has: cuda, then mps, then cpu."""
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def setup(device: str = "auto") -> DistInfo:
    """Read torchrun's environment and start the process group (NCCL on CUDA, gloo otherwise)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1 or "RANK" not in os.environ:
        return DistInfo(device=default_device() if device == "auto" else device)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = default_device() if device == "auto" else device
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def autocast(device: str | torch.device, dtype: str) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes; float32 means none. Losses are reduced in float32 regardless."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype '{dtype}'; choices: {', '.join(DTYPES)}")
    if dtype == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=torch.device(device).type, dtype=DTYPES[dtype])


def fast_bfloat16(device: str | torch.device) -> bool:
    """Whether bfloat16 matmuls run natively: on CPUs that means AVX512-BF16 or AMX; without them oneDNN emulates
    bfloat16 and it is far slower than float32 (measured here: 50x on an AVX2-only CPU)."""
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_bf16_supported()
    if kind == "cpu":
        try:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):
            return False
    return True


def barrier() -> None:
    """Wait for every rank (nothing to wait for in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean of `value` over all ranks (itself when there is one process)."""
    if dist.is_available() and dist.is_initialized():
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= dist.get_world_size()
    return value


def all_reduce_sum(values: list[float], device: str | torch.device) -> list[float]:
    """Sum `values` over the ranks when torch.distributed is running; unchanged otherwise."""
    if not (dist.is_available() and dist.is_initialized()):
        return values
    # NCCL reduces only CUDA tensors, gloo only CPU ones: the tensor lives on the model's device
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def print0(*args, **kwargs) -> None:
    """print on rank 0 only."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs)
