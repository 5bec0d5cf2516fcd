"""One torchrun rank's peak tensor memory over two DDP training steps of ACCUM micro-steps (gloo, CPU), printed by
rank 0: `python -m torch.distributed.run --standalone --nproc_per_node=2 -m tests.ddp_memory PRESET BATCH SEQ_LEN
ACCUM`."""

import sys

import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from tests.memory import training_peak

if __name__ == "__main__":
    preset, batch, seq_len, accum = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    dist.init_process_group("gloo")
    # as the trainer wraps it: the gradients live in DDP's buckets
    peak = training_peak(preset, batch, seq_len, wrap=lambda model: DDP(model, gradient_as_bucket_view=True),
                         accum=accum)
    if dist.get_rank() == 0:
        print(peak)
    dist.destroy_process_group()
