"""Two processes under torchrun (gloo, CPU) train exactly as one process with twice the accumulation."""

import json
import math

import pytest

from tests.torchrun import one_and_two_ranks
from tests.train.conftest import val_bytes_per_token


def losses(run_dir):
    return [json.loads(line)["loss"] for line in (run_dir / "log.jsonl").open() if '"loss"' in line]


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_ranks_match_one_rank_with_double_accumulation(fineweb_shards, tmp_path, optimizer):
    common = ["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "2", "--seq-len", "64",
              "--total-batch-size", "512", "--max-steps", "5", "--learning-rate", "3e-3", "--eval-every", "5",
              "--eval-iters", "2", "--optimizer", optimizer, "--device", "cpu"]
    single, double = one_and_two_ranks(common, tmp_path / "one", tmp_path / "two")
    assert "2 x cpu" in double.stdout and "(2 accumulation steps)" in double.stdout
    assert "1 x cpu" in single.stdout and "(4 accumulation steps)" in single.stdout
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 5
    assert max(abs(a - b) for a, b in zip(one, two, strict=True)) < 1e-4
    assert one[-1] < one[0]
    # bits per byte: each rank counts the bytes of its own validation targets, summed over the ranks
    for run_dir, n in ((tmp_path / "one", 2 * 2 * 64), (tmp_path / "two", 2 * 2 * 2 * 64)):
        val = [json.loads(line) for line in (run_dir / "log.jsonl").open() if '"val_bpb"' in line][-1]
        assert val["val_bytes_per_token"] == pytest.approx(val_bytes_per_token(fineweb_shards, n))
        assert val["val_bpb"] == pytest.approx(val["val_loss"] / math.log(2) / val["val_bytes_per_token"])
