"""One torchrun rank's bytes of parameters and optimizer state after a training step under FSDP, against the
unsharded model's, and whether the model.safetensors the ranks wrote together holds the unsharded model's weights
(gloo, CPU; the exact vocabulary, whose odd row count shards unevenly), printed by rank 0 as three numbers:
`python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.fsdp_shards PRESET OPTIMIZER FILE`."""

import sys
from pathlib import Path

import torch
import torch.distributed as tdist

from ghoul.checkpoint import load_weights, read_weights
from ghoul.dist import DistInfo
from ghoul.model import GPT, GPTConfig, vocab_padding
from ghoul.optim.build import build_optimizers
from ghoul.train.fsdp import save_weights, shard_model
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


def trained(preset: str, optimizer: str, d: DistInfo | None, weights: Path | None = None
            ) -> tuple[GPT, list[torch.optim.Optimizer]]:
    """The model after a step, sharded over the ranks of `d` (whose initial weights it writes to `weights`)."""
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name(preset, vocab_padding=vocab_padding(False)))
    if d is not None:
        shard_model(model, d, "float32")
        save_weights(model, weights, d)
    optimizers = build_optimizers(model, optimizer, 1e-3, 0.1)
    x = torch.randint(0, model.config.vocab_size, (2, 32))
    lm_loss(model, x, torch.roll(x, -1, 1)).backward()
    for opt in optimizers:
        opt.step()
    return model, optimizers


if __name__ == "__main__":
    preset, optimizer, weights = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    tdist.init_process_group("gloo")
    d = DistInfo(rank=tdist.get_rank(), world_size=tdist.get_world_size(), distributed=True)
    sharded = state_bytes(*trained(preset, optimizer, d, weights))
    whole = state_bytes(*trained(preset, optimizer, None))
    if d.is_main:
        torch.manual_seed(0)  # the same initial weights, unsharded
        model = GPT(GPTConfig.from_name(preset, vocab_padding=vocab_padding(False)))
        written = read_weights(weights)
        load_weights(model.__class__(model.config), written, weights)  # every weight there, of its shape
        same = all(torch.equal(written[k], v) for k, v in model.state_dict().items() if k in written)
        print(sharded, whole, int(same))
    tdist.destroy_process_group()
