"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded across the ranks,
for models whose replica, gradients and AdamW state do not fit one GPU.

Applied from outside the model, as DDP is: each transformer block is one unit (its parameters are all-gathered
just before its forward and backward and freed after), the root holds the rest (embeddings, final norm, head).
A parameter becomes a DTensor sharded by rows; the optimizers work on the shards as they are, Muon on whole
matrices (ghoul.optim.muon). Training checkpoints keep the optimizer state sharded (torch.distributed.checkpoint:
each rank writes its own part, and any number of ranks reads it back); the model's weights are gathered one tensor
at a time into rank 0's CPU memory for `model.safetensors`, so a checkpoint is the same model directory as under DDP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard, register_fsdp_forward_method
from torch.distributed.tensor import DTensor

from ghoul.dist import DTYPES, DistInfo
from ghoul.model import GPT


def shard_model(model: GPT, d: DistInfo, dtype: str) -> GPT:
    """Shard `model` in place over the ranks: each block, then the root. With bfloat16 (or float16) training the
    blocks compute with parameters all-gathered in that precision and reduce gradients in float32; the sharded
    master weights and the optimizer state stay float32."""
    mesh = init_device_mesh(d.device_type, (d.world_size,))
    policy = MixedPrecisionPolicy()
    if dtype != "float32":
        policy = MixedPrecisionPolicy(param_dtype=DTYPES[dtype], reduce_dtype=torch.float32)
    for block in model.transformer.h:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)
    # only `forward` gathers the root's parameters by itself; HellaSwag and samples call these directly
    for method in ("hidden_states", "logits", "decoding_head"):
        register_fsdp_forward_method(model, method)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    """Whether `model` (or the model a torch.compile wrapper holds) is sharded by FSDP."""
    return isinstance(getattr(model, "_orig_mod", model), FSDPModule)


def set_gradient_sync(model: torch.nn.Module, sync: bool) -> None:
    """Reduce-scatter the gradients in this backward pass or not: off on the micro-steps of gradient accumulation
    before the last, whose gradients then add up unsharded in each rank's memory."""
    getattr(model, "_orig_mod", model).set_requires_gradient_sync(sync)


def full_weights(model: GPT) -> dict[str, torch.Tensor]:
    """The whole model's weights on rank 0's CPU (empty elsewhere): a collective, every rank calls it."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


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
    dcp.load(state, checkpoint_id=folder)
    set_optimizer_state_dict(model, optimizers, state["optimizers"])
