"""One torchrun rank's peak tensor memory over two FSDP training steps of ACCUM micro-steps (gloo, CPU), printed by
rank 0, one line for each of the comma-separated ACCUM values: `python -m torch.distributed.run --standalone
--nproc_per_node=2 -m tests.fsdp_memory PRESET BATCH SEQ_LEN ACCUM[,ACCUM...] [DTYPE [checkpointing]]`."""

import sys

import torch.distributed as dist

from ghoul.dist import DistInfo
from ghoul.train.fsdp import shard_model
from tests.memory import training_peak

if __name__ == "__main__":
    preset, batch, seq_len, accums = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4].split(",")
    dtype = sys.argv[5] if len(sys.argv) > 5 else "float32"
    checkpointing = len(sys.argv) > 6 and sys.argv[6] == "checkpointing"
    dist.init_process_group("gloo")
    d = DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), device="cpu", distributed=True)
    for accum in accums:  # one process group for all: torchrun's start costs more than a small model's steps
        # as the trainer shards it: each block, then the root
        peak = training_peak(preset, batch, seq_len, dtype, checkpointing=checkpointing,
                             wrap=lambda model: shard_model(model, d, dtype), accum=int(accum))
        if dist.get_rank() == 0:
            print(peak)
    dist.destroy_process_group()
