"""PPO and GRPO under torchrun: two processes (gloo, CPU), each rolling out half of every step's prompts, train
exactly as one process does with all of them, and a run resumes on another number of ranks."""

import pytest
import torch

from ghoul.checkpoint import load_model_dir
from ghoul.files import read_jsonl
from tests.torchrun import ghoul_on_ranks, one_and_two_ranks


def records(run) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in read_jsonl(run / "log.jsonl")]


def assert_same_records(a: list[dict], b: list[dict]) -> None:
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(a, b, strict=True):  # rewards, KL, clip fraction, losses, lengths: summed in another order
        assert x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-4 for k in x), (x, y)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_two_ranks_match_one_process_and_resume_across_rank_counts(tiny_model, tmp_path, method):
    common = [method, "--policy", str(tiny_model), "--judge", "length", "--prompt", "The door", "--max-steps", "4",
              "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "8", "--learning-rate", "1e-3",
              "--checkpoint-every", "2", "--device", "cpu"]
    _, two = one_and_two_ranks(common, tmp_path / "one", tmp_path / "two")
    assert "on 2 x cpu" in two.stderr
    one_log = records(tmp_path / "one")
    assert len({r["loss"] for r in one_log}) > 1  # it learns: four different steps to agree on
    assert_same_records(one_log, records(tmp_path / "two"))
    a, b = (load_model_dir(tmp_path / run).state_dict() for run in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    # the single process's checkpoint of step 2, continued on two ranks: the same steps 3 and 4
    ghoul_on_ranks([*common, "--output-dir", str(tmp_path / "resumed"), "--resume",
                    str(tmp_path / "one" / "step_000002")], 2)
    assert_same_records(one_log[2:], records(tmp_path / "resumed"))
