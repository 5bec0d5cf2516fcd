"""Under torchrun (gloo, CPU): two processes (DDP or FSDP) train exactly as one process with twice the accumulation,
one process trains under DDP too, and each rank resumes its own random state (CUDA's faked)."""

import base64
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ghoul import dist
from ghoul.checkpoint import load_model_dir
from ghoul.train.context import rng_state, set_rng_state
from tests.torchrun import ghoul_on_ranks, one_and_two_ranks
from tests.train.conftest import val_bytes_per_token


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").open() if '"loss"' in line]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ranks_match_one_rank_with_double_accumulation(fineweb_shards, tmp_path, optimizer):
    """Two DDP ranks, and two FSDP ranks (parameters, gradients and optimizer state sharded; Muon orthogonalising
    the gathered matrices), train as one process does."""
    common = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
              "--total-batch-size", "512", "--max-steps", "5", "--learning-rate", "3e-3", "--eval-every", "5",
              "--eval-iters", "2", "--optimizer", optimizer, "--device", "cpu"]
    single, double = one_and_two_ranks(common, tmp_path / "one", tmp_path / "two")
    ghoul_on_ranks([*common, "--parallel", "fsdp", "--output-dir", str(tmp_path / "fsdp")], 2)
    assert "2 x cpu" in double.stdout and "(2 accumulation steps)" in double.stdout
    assert "1 x cpu" in single.stdout and "(4 accumulation steps)" in single.stdout
    one, two, fsdp = losses(tmp_path / "one"), losses(tmp_path / "two"), losses(tmp_path / "fsdp")
    assert len(one) == len(two) == len(fsdp) == 5
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(one, fsdp, strict=True)) < 1e-4
    assert one[-1] < one[0] and len(set(one)) == 5
    ddp_weights, fsdp_weights = (load_model_dir(tmp_path / run).state_dict() for run in ("two", "fsdp"))
    assert all(torch.allclose(ddp_weights[k], fsdp_weights[k], atol=1e-5) for k in ddp_weights)
    # bits per byte: each rank counts the bytes of its own validation targets, summed over the ranks
    for run_dir, n in ((tmp_path / "one", 2 * 2 * 64), (tmp_path / "two", 2 * 2 * 2 * 64)):
        val = [json.loads(line) for line in (run_dir / "log.jsonl").open() if '"val_bpb"' in line][-1]
        assert val["val_bytes_per_token"] == pytest.approx(val_bytes_per_token(fineweb_shards, n))
        assert val["val_tokens"] == n
        assert val["val_bpb"] == pytest.approx(val["val_loss"] / math.log(2) / val["val_bytes_per_token"])


class FakeCuda:
    """CUDA's random state as torch.cuda keeps it, for `count` GPUs without a GPU: one generator state per device,
    the current device, and set_rng_state_all's IndexError-like failure on a device that does not exist."""

    def __init__(self, monkeypatch, count: int) -> None:
        self.count, self.device, self.states = count, 0, {i: self.state(0) for i in range(count)}
        for name in ("is_available", "is_initialized"):
            monkeypatch.setattr(torch.cuda, name, lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.device)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self.states[self.index(device)])
        monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [self.states[i] for i in range(self.count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state", self.set)
        monkeypatch.setattr(torch.cuda, "set_rng_state_all",
                            lambda states: [self.set(s, i) for i, s in enumerate(states)])

    @staticmethod
    def state(value: int) -> torch.Tensor:
        return torch.full((8,), value, dtype=torch.uint8)

    def index(self, device) -> int:
        index = torch.device(device).index if isinstance(device, str) else device
        return self.device if index is None else index

    def set(self, state: torch.Tensor, device="cuda") -> None:
        index = self.index(device)
        if index >= self.count:
            raise IndexError(f"no CUDA device {index}: {self.count} visible")
        self.states[index] = state.clone()


def save_on_two_ranks(monkeypatch, cuda: FakeCuda) -> dict:
    """The record rank 0 stores after two ranks advanced their own GPU's generator (and their CPU one alike)."""
    gathered: dict[int, dict] = {}

    def gather(obj):
        gathered[cuda.device] = obj
        return [gathered.get(r) for r in range(2)]
    monkeypatch.setattr(dist, "all_gather_objects", gather)
    for rank in (1, 0):  # rank 0's call is the one that sees both
        cuda.device, cuda.states = rank, {i: cuda.state(0) for i in range(cuda.count)}  # each rank's process
        cuda.states[rank] = cuda.state(10 + rank)
        torch.manual_seed(100 + rank)
        record = rng_state()
    return json.loads(json.dumps(record))  # as trainer_state.json holds it


def test_each_rank_resumes_its_own_gpu_and_cpu_random_state(monkeypatch):
    cuda = FakeCuda(monkeypatch, 2)
    record = save_on_two_ranks(monkeypatch, cuda)
    cuda.states = {0: cuda.state(0), 1: cuda.state(0)}  # a fresh process for rank 1
    cuda.device = 1
    monkeypatch.setattr(dist, "process_rank", lambda: 1)
    set_rng_state(record)
    assert torch.equal(cuda.states[1], cuda.state(11))  # its own state, not rank 0's never-advanced one
    assert torch.equal(torch.rand(3), torch.rand(3, generator=torch.Generator().manual_seed(101)))


def test_resume_on_a_machine_with_fewer_gpus(monkeypatch):
    """Saved where 8 GPUs were visible, resumed where one is: nothing indexes the 7 that are missing."""
    cuda = FakeCuda(monkeypatch, 8)
    cuda.states[0] = cuda.state(7)
    monkeypatch.setattr(dist, "all_gather_objects", lambda obj: [obj])
    record = json.loads(json.dumps(rng_state()))
    cuda.count, cuda.states = 1, {0: cuda.state(0)}
    set_rng_state(record)
    assert torch.equal(cuda.states[0], cuda.state(7))
    # an older checkpoint: rank 0's state of each of the 8 GPUs it saw
    mine = record["ranks"][0]
    older = {**mine, "cuda": [mine["cuda"], *[base64.b64encode(bytes(8)).decode()] * 7]}
    cuda.states = {0: cuda.state(0)}
    set_rng_state(older)
    assert torch.equal(cuda.states[0], cuda.state(7))


DDP_PROBE = """
import sys
from ghoul.cli import main
from ghoul.train import loop

wrapped = []


class Recorded(loop.DDP):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        wrapped.append(self)


loop.DDP = Recorded
code = main(sys.argv[1:])
grads = [p.grad for p in wrapped[0].module.parameters()] if wrapped else []
print("DDP" if wrapped else "no DDP", "buckets" if grads and all(g is not None for g in grads) else "no grads")
sys.exit(code)
"""


def test_one_torchrun_rank_trains_under_ddp(fineweb_shards, tmp_path):
    """torchrun with one process starts a process group and wraps the model in DDP: the path of eight GPUs on one
    (the device check runs it over NCCL). After the last step the gradients are zeroed in DDP's buckets, not freed."""
    probe = tmp_path / "probe.py"
    probe.write_text(DDP_PROBE)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(probe), "pretrain", "--dataset", str(fineweb_shards), "--model", "tiny",
                           "--batch-size", "2", "--seq-len", "64", "--total-batch-size", "256", "--max-steps", "2",
                           "--eval-every", "0", "--device", "cpu", "--output-dir", str(tmp_path / "run")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "DDP buckets" in done.stdout and "(2 accumulation steps)" in done.stdout, done.stdout
