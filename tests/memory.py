"""The peak of the tensors a training step holds, measured on the CPU: what torch.cuda.max_memory_allocated reports
on a GPU, for checking `ghoul plan` without one (tests/test_plan.py; tests/ddp_memory.py and tests/fsdp_memory.py
under torchrun)."""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ghoul import dist
from ghoul.model import GPT, GPTConfig, vocab_padding
from ghoul.optim.build import build_optimizers
from ghoul.train.fsdp import is_sharded, set_gradient_sync
from ghoul.train.loop import lm_loss


class LiveTensorBytes(TorchDispatchMode):
    """The bytes of the tensors alive, each storage counted from the operation that made it to its release, and
    their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.storages: dict[int, weakref.ref] = {}
        self.sizes: dict[int, int] = {}
        self.live = self.peak = 0

    def add(self, tensor: torch.Tensor) -> None:
        if isinstance(tensor, DTensor):  # FSDP's parameter shards and their optimizer state: count the local part
            tensor = tensor.to_local()
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self.storages:  # a view, or an operation that returned its input
            return

        def release(_: weakref.ref) -> None:
            self.storages.pop(key, None)
            self.live -= self.sizes.pop(key, 0)
        self.storages[key] = weakref.ref(storage, release)
        self.sizes[key] = 0
        self.resized(storage)

    def resized(self, storage: torch.UntypedStorage) -> None:
        if storage._cdata in self.sizes:
            self.live += storage.nbytes() - self.sizes[storage._cdata]
            self.sizes[storage._cdata] = storage.nbytes()
            self.peak = max(self.peak, self.live)

    def __enter__(self) -> LiveTensorBytes:
        # FSDP frees and refills its all-gathered parameters by resizing their storage, which no operation shows
        resize = self.resize = torch.UntypedStorage.resize_

        def counted(storage: torch.UntypedStorage, nbytes: int) -> torch.UntypedStorage:
            resize(storage, nbytes)
            self.resized(storage)
            return storage
        torch.UntypedStorage.resize_ = counted
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        torch.UntypedStorage.resize_ = self.resize
        super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


def training_peak(preset: str, batch: int, seq_len: int, dtype: str = "float32", optimizer: str = "adamw",
                  checkpointing: bool = False, wrap: Callable[[torch.nn.Module], torch.nn.Module] | None = None,
                  accum: int = 1) -> int:
    """Peak bytes over two training steps of `accum` micro-steps as the trainer runs them (the first makes the
    optimizer's state), counted from the model's creation; `wrap` adds DDP and its buckets, or shards the model with
    FSDP (either synchronised on the last micro-step only, as the trainer does)."""
    torch.manual_seed(0)
    memory = LiveTensorBytes()
    with memory:
        model = GPT(GPTConfig.from_name(preset, vocab_padding=vocab_padding(True)))
        model.checkpoint_blocks = checkpointing
        trained = wrap(model) if wrap else model
        optimizers = build_optimizers(model, optimizer, 1e-4, 0.1)  # after FSDP has replaced the parameters by shards
        x = torch.randint(0, model.config.vocab_size, (batch, seq_len))
        for _ in range(2):
            for micro in range(accum):
                sync = micro == accum - 1
                if is_sharded(trained):
                    set_gradient_sync(trained, sync)
                with contextlib.nullcontext() if sync or not isinstance(trained, DDP) else trained.no_sync():
                    with dist.autocast("cpu", dtype):
                        loss = lm_loss(trained, x, torch.roll(x, -1, 1)) / accum
                    loss.backward()
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=dist.grads_to_none(trained))
    return memory.peak
