"""Run a ghoul command as one process and as two torchrun ranks (gloo on the CPU), for the equivalence tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ghoul_on_ranks(args: list[str], ranks: int) -> subprocess.CompletedProcess:
    """`ghoul ARGS` in one process (ranks=1) or under `torchrun --nproc_per_node=RANKS`; it must succeed. One OpenMP
    thread per process: two ranks on two cores."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    done = subprocess.run([sys.executable, *launcher, "-m", "ghoul", *args], capture_output=True, text=True, env=env,
                          timeout=300)
    # a failed rank's own message comes before torchrun's report of the failure: show both
    clues = [line for line in done.stderr.splitlines() if any(w in line for w in ("what()", "terminate", "Error"))]
    assert done.returncode == 0, "\n".join(clues[-10:]) + "\n" + done.stderr[-2000:]
    return done


def one_and_two_ranks(args: list[str], one: Path, two: Path) -> tuple[subprocess.CompletedProcess, ...]:
    """`ghoul ARGS --output-dir ONE` in one process, then under torchrun with two ranks into TWO."""
    return ghoul_on_ranks([*args, "--output-dir", str(one)], 1), ghoul_on_ranks([*args, "--output-dir", str(two)], 2)
