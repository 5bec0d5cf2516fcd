"""`--parallel fsdp` under torchrun (gloo, CPU): checkpoints with the optimizer state sharded resume exactly on the
same, a smaller and a larger number of ranks, HellaSwag and samples run on sharded models, each rank holds half of the
training state, and the model directory is the one every later stage reads."""

import json
import os
import subprocess
import sys

import pytest
import torch
import transformers

from ghoul.checkpoint import load_model_dir
from ghoul.cli import main
from ghoul.files import read_jsonl
from tests.conftest import REPO
from tests.torchrun import ghoul_on_ranks
from tests.train.conftest import log, losses


@pytest.fixture(scope="module")
def runs(fineweb_shards, data, tmp_path_factory):
    """The same 4 steps on two FSDP ranks (with HellaSwag, samples and activation checkpointing) and in one process,
    each resumed from its step 2 on the other number of ranks (and the two ranks' on two again)."""
    root = tmp_path_factory.mktemp("fsdp")
    common = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
              "--total-batch-size", "512", "--max-steps", "4", "--learning-rate", "3e-3", "--eval-every", "2",
              "--eval-iters", "2", "--checkpoint-every", "2", "--parallel", "fsdp", "--device", "cpu"]
    # 33 examples: rank 0 scores two batches of 16 and rank 1 one, yet both run the sharded model's forward twice
    extras = ["--activation-checkpointing", "--hellaswag-every", "2", "--hellaswag-limit", "33", "--hellaswag-path",
              str(data / "hellaswag" / "hellaswag_val_first100.jsonl"), "--sample-every", "2"]
    for name, ranks, resume in (("two", 2, None), ("one", 1, None), ("two_on_two", 2, "two"),
                                ("two_on_one", 1, "two"), ("one_on_two", 2, "one")):
        args = [*common, "--output-dir", str(root / name)] + (extras if name == "two" else [])
        ghoul_on_ranks(args + (["--resume", str(root / resume / "step_000002")] if resume else []), ranks)
    return root


def test_two_fsdp_ranks_resume_on_two_one_and_from_one(runs):
    two, one = losses(runs / "two"), losses(runs / "one")
    assert len(two) == 4 and max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4
    assert losses(runs / "two_on_two") == two[2:]  # the interrupted run equals the uninterrupted one, bitwise
    assert max(abs(a - b) for a, b in zip(losses(runs / "two_on_one"), two[2:], strict=True)) < 1e-4
    assert max(abs(a - b) for a, b in zip(losses(runs / "one_on_two"), one[2:], strict=True)) < 1e-4
    step = runs / "two" / "step_000004"
    assert {p.name for p in step.iterdir()} == {"config.json", "model.safetensors", "trainer_state.json", "optimizer"}
    assert len(list((step / "optimizer").glob("*.distcp"))) == 2  # one file per rank, never gathered
    weights = [load_model_dir(runs / run).state_dict() for run in ("two", "one", "two_on_one", "one_on_two")]
    assert all(torch.allclose(weights[0][k], w[k], atol=1e-5) for w in weights[1:] for k in weights[0])


def test_hellaswag_and_samples_run_on_the_sharded_model(runs):
    scored = [r["hellaswag_acc"] for r in log(runs / "two") if "hellaswag_acc" in r]
    assert len(scored) == 3 and all(0 <= acc <= 1 for acc in scored)  # steps 0, 2 and 4
    samples = read_jsonl(runs / "two" / "samples.jsonl")
    assert [s["step"] for s in samples] == [0, 2, 4] and all(s["text"] for s in samples)


def test_the_model_directory_exports_and_generates_as_its_twin(runs, tmp_path):
    """The FSDP run's model directory exports to transformers, whose greedy tokens are those ghoul draws from the
    single-process twin's weights."""
    assert main(["export", "hf", str(runs / "two"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    twin = load_model_dir(runs / "one").eval()
    idx = torch.tensor([[464, 3290, 373]])  # "The door was"
    with torch.no_grad():
        expected = twin.generate(idx, 16, temperature=0)
        got = hf.generate(idx, max_new_tokens=16, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_each_rank_holds_half_of_the_state_and_writes_its_rows_of_the_weights(optimizer, tmp_path):
    """Parameters and optimizer state measured from the tensors; the weights file written by both ranks, each its
    own rows (50,257 of them: one rank has a row more), holds every weight of the unsharded model, bit for bit."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tests.fsdp_shards", "tiny", optimizer, str(tmp_path / "model.safetensors")],
                          capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300)  # -m tests.*: from the repository's root
    assert done.returncode == 0, done.stderr[-2000:]
    sharded, whole, same = map(int, done.stdout.split()[-3:])
    assert 0.49 * whole <= sharded <= 0.51 * whole, (sharded, whole)
    assert same == 1


def test_bfloat16_shards_train_as_float32_and_a_ddp_checkpoint_is_refused(fineweb_shards, tmp_path):
    common = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
              "--max-steps", "3", "--learning-rate", "3e-3", "--eval-every", "0", "--parallel", "fsdp",
              "--device", "cpu"]
    for dtype in ("float32", "bfloat16"):
        ghoul_on_ranks([*common, "--dtype", dtype, "--output-dir", str(tmp_path / dtype)], 2)
    f32, bf16 = losses(tmp_path / "float32"), losses(tmp_path / "bfloat16")
    assert max(abs(a - b) for a, b in zip(f32, bf16, strict=True)) < 0.02 and f32 != bf16
    config = json.loads((tmp_path / "bfloat16" / "config.json").read_text())
    assert config["dtype"] == "bfloat16" and config["parallel"] == "fsdp"
    # a DDP run's whole optimizer state does not go into shards: one line saying how to resume it
    ddp = [*common[:-4], "--device", "cpu", "--max-steps", "2", "--output-dir", str(tmp_path / "ddp")]
    assert main(ddp) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "ghoul", *common, "--output-dir", str(tmp_path / "ddp"), "--resume",
                           str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode != 0
    assert "was saved by a --parallel ddp run" in done.stderr and "resume it with --parallel ddp" in done.stderr


def test_a_damaged_sharded_optimizer_state_is_a_one_line_error(fineweb_shards, tmp_path, capsys):
    """One process writes the sharded form too under --parallel fsdp; a rank's file gone stops the resume in a line."""
    args = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
            "--eval-every", "0", "--parallel", "fsdp", "--device", "cpu", "--output-dir", str(tmp_path / "run")]
    assert main([*args, "--max-steps", "2"]) == 0
    (shard,) = (tmp_path / "run" / "step_000002" / "optimizer").glob("*.distcp")
    shard.unlink()
    capsys.readouterr()
    assert main([*args, "--max-steps", "3", "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "could not be read" in err and "resume from an earlier checkpoint" in err and len(err.splitlines()) == 1
