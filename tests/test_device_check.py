"""`python -m benchmarks.device_check` in its CPU mode: its stages' run directories and plans, and its torchrun stage
over gloo (the NCCL one on a GPU runs the same code)."""

from pathlib import Path

import pytest

from benchmarks import device_check
from benchmarks.device_check import MEMORY_ACCUM
from ghoul.dist import resolve_dtype
from ghoul.model import PRESETS
from ghoul.plan import GiB, PlanConfig, estimate


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return device_check.synthetic_shards(tmp_path_factory.mktemp("device_check") / "shards", tokens=100_000)


def test_memory_and_speed_stages_have_their_own_run_directories(shards, tmp_path):
    """With --no-compile the speed run of the memory stage's preset reused its directory ("... holds a run")."""
    memory = device_check.memory_against_plan("tiny", shards, tmp_path, "cpu")
    assert set(memory) == {"plain", "activation checkpointing"}
    assert memory["plain"]["measured_gib"] is None  # no CUDA: nothing measured, the stage still runs
    speed = device_check.pretrain("tiny", shards, tmp_path, "cpu", 2, compile=False)
    assert speed["steps"] == 2 and speed["final_loss"] > 0


def test_memory_stage_plans_the_reference_runs_memory():
    """Its one-GPU run with accumulation keeps the gradients beside the activations, as DDP's buckets do in the
    reference run (gpt2-xl, micro-batch 12 on 8 GPUs): the plan it is measured against is the reference run's."""
    one, accumulating = (device_check.plan_gib("gpt2-xl", "cpu", False, accum) for accum in (1, MEMORY_ACCUM))
    assert MEMORY_ACCUM > 1 and accumulating > one
    assert accumulating * GiB == estimate(PlanConfig(dtype="float32"))["memory_total"]  # what runs on a CPU


@pytest.mark.parametrize("parallel,nproc", [("ddp", 1), ("fsdp", 2)])
def test_torchrun_stage_trains_resumes_and_evaluates_on_gloo(shards, tmp_path, parallel, nproc):
    r = device_check.torchrun_run(shards, tmp_path, "cpu", False, parallel, nproc)
    assert r["passed"], r["tail"]
    assert r["dtype"] == "float32" and r["hellaswag"] == 3 and r["samples"] == 3  # steps 0, 2 and 4
    assert r["resume_loss_difference"] == 0  # exact on a CPU


def test_fsdp_speed_stage_measures_on_gloo(shards, tmp_path):
    r = device_check.fsdp_speed("tiny", shards, tmp_path, "cpu", 2, compile=False, nproc=2)
    assert r["ranks"] == 2 and r["tokens_per_s"] > 0 and r["final_loss"] > 0
    assert r["mfu"] is None and not (tmp_path / "fsdp-tiny").exists()  # no peak FLOP/s for a CPU


def test_user_paths_stage_runs_each_command_on_the_default_architecture(shards, tmp_path):
    """Pretraining `laptop`, sampling, the loss and the feedback trainers, each as its own process (on CUDA in the
    device check; here as its CPU self-check)."""
    r = device_check.user_paths(shards, tmp_path, "cpu", compile=False)
    assert r["passed"], r["tail"]
    assert r["dtype"] == resolve_dtype("auto", "cpu", PRESETS["laptop"]["n_embd"])  # as a user's run resolves it
    assert set(r) >= {"pretrain", "generate", "eval-loss", "rlhf-dpo", "grpo"}
    assert (tmp_path / "rlhf" / "dpo" / "latest").is_file() and (tmp_path / "grpo" / "latest").is_file()
