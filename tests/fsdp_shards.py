"""One torchrun rank's bytes of parameters and optimizer state after a training step under FSDP, against the
unsharded model's (gloo, CPU), printed by rank 0 as two numbers: `python -m torch.distributed.run --standalone
--nproc_per_node=2 -m tests.fsdp_shards PRESET OPTIMIZER`."""

import sys

import torch
import torch.distributed as tdist

from ghoul.dist import DistInfo
from ghoul.model import GPT, GPTConfig, vocab_padding
from ghoul.optim.build import build_optimizers
from ghoul.train.fsdp import shard_model
from ghoul.train.loop import lm_loss


def local_bytes(t: torch.Tensor) -> int:
    """The bytes this rank holds of `t` (its shard of a DTensor)."""
    t = t.to_local() if hasattr(t, "to_local") else t
    return t.numel() * t.element_size()


def state_bytes(model: GPT, optimizers: list[torch.optim.Optimizer]) -> int:
    params = sum(local_bytes(p) for p in model.parameters())
    states = sum(local_bytes(v) for opt in optimizers for s in opt.state.values() for v in s.values()
                 if isinstance(v, torch.Tensor) and v.ndim > 0)  # not AdamW's step counters
    return params + states


def trained(preset: str, optimizer: str, d: DistInfo | None) -> tuple[GPT, list[torch.optim.Optimizer]]:
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, vocab_padding=vocab_padding(True)))
    if d is not None:
        shard_model(model, d, "float32")
    optimizers = build_optimizers(model, optimizer, 1e-3, 0.1)
    x = torch.randint(0, model.config.vocab_size, (2, 32))
    lm_loss(model, x, torch.roll(x, -1, 1)).backward()
    for opt in optimizers:
        opt.step()
    return model, optimizers


if __name__ == "__main__":
    preset, optimizer = sys.argv[1], sys.argv[2]
    tdist.init_process_group("gloo")
    d = DistInfo(rank=tdist.get_rank(), world_size=tdist.get_world_size(), distributed=True)
    sharded = state_bytes(*trained(preset, optimizer, d))
    whole = state_bytes(*trained(preset, optimizer, None))
    if d.is_main:
        print(sharded, whole)
    tdist.destroy_process_group()
