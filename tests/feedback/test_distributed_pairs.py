"""Pair training (DPO, the reward model) under torchrun: two processes (gloo, CPU; DDP or FSDP) train exactly as one
process with twice the accumulation, so each rank reads its own pairs and the gradients are averaged once."""

import pytest

from ghoul.files import read_jsonl
from tests.feedback.prefdata import write_marker_rankings
from tests.torchrun import ghoul_on_ranks, one_and_two_ranks


@pytest.mark.parametrize("stage", [["dpo", "--policy"], ["reward", "train", "--base-model"]])
def test_two_ranks_match_one_rank_with_double_accumulation(tiny_model, tmp_path, stage):
    rankings = write_marker_rankings(tmp_path / "data", groups=12)
    # pairs per step: 2 per micro-batch x 2 (ranks or micro-steps)
    common = [*stage, str(tiny_model), "--rankings", str(rankings), "--batch-size", "2", "--total-batch-size", "4",
              "--max-steps", "4", "--learning-rate", "1e-3", "--eval-every", "4", "--eval-iters", "1",
              "--val-fraction", "0.25", "--device", "cpu"]
    single, double = one_and_two_ranks(common, tmp_path / "one", tmp_path / "two")
    ghoul_on_ranks([*common, "--parallel", "fsdp", "--output-dir", str(tmp_path / "fsdp")], 2)
    assert "(2 accumulation steps)" in single.stdout and "2 x cpu" in double.stdout
    one = read_jsonl(tmp_path / "one" / "log.jsonl")
    assert len({r["loss"] for r in one if "loss" in r}) == 4  # it learns: four different losses to agree on
    for run in ("two", "fsdp"):
        two = read_jsonl(tmp_path / run / "log.jsonl")
        assert len([r for r in one if "loss" in r]) == len([r for r in two if "loss" in r]) == 4
        for a, b in zip(one, two, strict=True):  # the losses and the loss functions' metrics (margins, accuracies)
            assert a.keys() == b.keys()
            # validation is left out: with two ranks each scores its own slice, twice the pairs of one process
            for key in {k for k in a if not k.startswith("val_")} - {"tokens_per_s", "elapsed", "mfu"}:
                assert abs(a[key] - b[key]) < 1e-4, (run, a["step"], key, a[key], b[key])
