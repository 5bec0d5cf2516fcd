"""Run a ghoul command as one process and as two torchrun ranks (gloo on the CPU), for the equivalence tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def one_and_two_ranks(args: list[str], one: Path, two: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """`ghoul ARGS --output-dir ONE` in one process, then under `torchrun --nproc_per_node=2` into TWO; both must
    succeed. One OpenMP thread per process: two ranks on two cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for launcher, out in (([], one), (["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], two)):
        done = subprocess.run([sys.executable, *launcher, "-m", "ghoul", *args, "--output-dir", str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(done)
    return tuple(runs)
