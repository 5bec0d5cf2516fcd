"""`ghoul ARGS` as one torchrun rank, where only rank 1 gets a Ctrl-C (SIGINT), as it reads its training batch N:
`python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.train.interrupt_rank N ARGS...`."""

import os
import signal
import sys
from collections.abc import Callable

from ghoul.data.loader import ShardLoader


def interrupting_next(batches: set[int], split: str | None = None) -> Callable:
    """ShardLoader.__next__ that sends this process SIGINT as it reads the given batches (counted from 1; with
    `split`, of that split only: validation reads batches too)."""
    read, count = ShardLoader.__next__, [0]

    def next_batch(self: ShardLoader):
        if split is None or self.split == split:
            count[0] += 1
            if count[0] in batches:
                os.kill(os.getpid(), signal.SIGINT)
        return read(self)

    return next_batch


if __name__ == "__main__":
    from ghoul.cli import main

    if os.environ.get("RANK") == "1":
        ShardLoader.__next__ = interrupting_next({int(sys.argv[1])})
    sys.exit(main(sys.argv[2:]))
