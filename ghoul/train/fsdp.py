"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded across the ranks,
for models whose replica, gradients and AdamW state do not fit one GPU.

Applied from outside the model, as DDP is: each transformer block is one unit (its parameters are all-gathered
just before its forward and backward and freed after), the root holds the rest (embeddings, final norm, head).
A parameter becomes a DTensor sharded by rows; the optimizers work on the shards as they are, Muon on whole
matrices (ghoul.optim.muon). Nothing is gathered onto one rank to save a checkpoint: each rank writes its own rows
of every weight into the one `model.safetensors`, so a checkpoint is the same model directory as under DDP, and its
own part of the optimizer state (torch.distributed.checkpoint, which any number of ranks reads back).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from ghoul import dist
from ghoul.advice import advice
from ghoul.checkpoint import stored_weights
from ghoul.dist import DTYPES, DistInfo
from ghoul.errors import GhoulError
from ghoul.model import GPT


def shard_model(model: GPT, d: DistInfo, dtype: str) -> GPT:
    """Shard `model` in place over the ranks: each block, then the root. With bfloat16 (or float16) training the
    blocks compute with parameters all-gathered in that precision and reduce gradients in float32; the sharded
    master weights and the optimizer state stay float32."""
    mesh = init_device_mesh(d.device_type, (d.world_size,))
    policy = (MixedPrecisionPolicy() if dtype == "float32" else
              MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32))
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # only `forward` gathers the root's parameters by itself; HellaSwag and samples call these directly
    for method in ("hidden_states", "logits", "decoding_head"):
        register_fsdp_forward_method(model, method)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` is sharded by FSDP."""
    return isinstance(model, FSDPModule)


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Reduce-scatter the gradients in this backward pass or not: off on the micro-steps of gradient accumulation
    before the last, whose gradients then add up unsharded in each rank's memory."""
    model.set_requires_gradient_sync(sync)


# safetensors' names of the dtypes a model holds
SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}


def save_weights(model: GPT, path: Path, d: DistInfo) -> None:
    """Write the model's weights to the safetensors file `path` from every rank at once (a collective): rank 0
    writes the header, then each rank its own rows of each tensor. FSDP shards by rows, so a rank's part of a tensor
    is one run of bytes in the file, and no rank ever holds more than its shard. A plain model's rank 0 writes all."""
    weights = stored_weights(model)
    header: dict = {"__metadata__": {"format": "pt"}}
    end = 0
    for name, t in weights.items():
        size = t.numel() * t.element_size()
        header[name] = {"dtype": SAFETENSORS_DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [end, end + size]}
        end += size
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    data = 8 + len(text)
    if d.is_main:
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(text)) + text)
            f.truncate(data + end)
    dist.barrier()
    with open(path, "r+b") as f:
        for name, t in weights.items():
            if isinstance(t, DTensor):
                local, first_row = t.to_local(), min(d.rank * -(-t.size(0) // d.world_size), t.size(0))  # as chunk
            elif d.is_main:
                local, first_row = t, 0
            else:
                continue
            row_bytes = t.numel() // max(t.size(0), 1) * t.element_size() if t.ndim else 0  # shape only: no gather
            f.seek(data + header[name]["data_offsets"][0] + first_row * row_bytes)
            f.write(local.contiguous().cpu().view(torch.uint8).numpy().tobytes())
    dist.barrier()  # every rank's rows are in before rank 0 moves the file into the checkpoint


def local_value(t: torch.Tensor) -> torch.Tensor:
    """A sharded value made whole on every rank (a gradient norm, a metric); a plain tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def save_optimizer_states(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], folder: Path) -> None:
    """Every rank writes its shard of the optimizers' state into `folder` (a collective); rank 0 writes the index."""
    shutil.rmtree(folder, ignore_errors=True)  # a folder left by a save that was killed
    dcp.save({"optimizers": get_optimizer_state_dict(model, optimizers)}, checkpoint_id=folder)


def load_optimizer_states(model: torch.nn.Module, optimizers: list[torch.optim.Optimizer], folder: Path) -> None:
    """Read the optimizers' state saved by `save_optimizer_states` into these ones, resharded for this run's ranks
    (one process reads the shards of many, and the other way round)."""
    state = {"optimizers": get_optimizer_state_dict(model, optimizers)}
    try:
        dcp.load(state, checkpoint_id=folder)
    except (dcp.CheckpointException, OSError, RuntimeError, ValueError, KeyError) as e:  # a file missing or cut short
        cause = e
        if isinstance(e, dcp.CheckpointException):  # each failed rank's (exception, stack)
            cause = next(iter(e.failures.values()), (e,))[0]
        first = f"{type(cause).__name__}: {(str(cause).strip().splitlines() or [''])[0][:200]}"
        raise GhoulError(f"{folder} could not be read ({first}): the checkpoint is damaged or was saved with other "
                         f"optimizer settings; {advice().earlier}") from None
    set_optimizer_state_dict(model, optimizers, state["optimizers"])
