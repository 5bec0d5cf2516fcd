"""The reward model: Bradley-Terry loss by hand, a synthetic preference learned on the CPU through the one training
loop, the saved directory, `ghoul reward score`, and the `reward:DIR` judge."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from ghoul.checkpoint import load_model_and_tokenizer, save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.feedback.judges import make_judge
from ghoul.feedback.reward import RewardJudge, RewardModel, bradley_terry_loss, load_reward_model
from ghoul.files import read_jsonl
from ghoul.layout import resolve_checkpoint
from ghoul.model import GPT, GPTConfig
from tests.feedback.prefdata import MARKER, write_marker_rankings


def test_bradley_terry_loss_by_hand():
    chosen, rejected = torch.tensor([1.0, 0.0, -2.0]), torch.tensor([0.0, 0.0, 1.0])
    # -log sigmoid(x) = log(1 + exp(-x)) for the margins 1, 0, -3
    expected = (math.log(1 + math.exp(-1)) + math.log(2) + math.log(1 + math.exp(3))) / 3
    assert bradley_terry_loss(chosen, rejected).item() == pytest.approx(expected, rel=1e-6)


@pytest.fixture(scope="module")
def marker_data(tmp_path_factory):
    return write_marker_rankings(tmp_path_factory.mktemp("marker"), groups=40)


@pytest.fixture(scope="module")
def reward_run(tiny_model, marker_data, tmp_path_factory):
    """`ghoul reward train` on the marker preference: 60 steps, about two seconds."""
    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("reward") / "run"
    assert main(["reward", "train", "--base-model", str(tiny_model), "--rankings", str(marker_data),
                 "--output-dir", str(run), "--max-steps", "60", "--learning-rate", "3e-3", "--weight-decay", "0",
                 "--batch-size", "8", "--eval-every", "30", "--val-fraction", "0.25", "--device", "cpu"]) == 0
    return run


def test_reward_model_learns_the_marker_preference(reward_run):
    log = read_jsonl(reward_run / "log.jsonl")
    val = [r for r in log if "val_loss" in r]
    assert val[0]["step"] == 0 and val[0]["val_loss"] == pytest.approx(math.log(2), abs=1e-4)  # zero head: ties
    assert val[-1]["val_accuracy"] >= 0.95 and val[-1]["val_loss"] < 0.2  # on held-out groups
    assert {"loss", "accuracy", "margin"} <= set(log[-1])
    assert len(read_jsonl(reward_run / "preferences.jsonl")) == 120  # 40 groups x 3 pairs


def test_reward_model_directory_holds_the_head(reward_run, tiny_model):
    model, _ = load_reward_model(reward_run)
    assert isinstance(model, RewardModel) and model.score.weight.abs().sum() > 0
    step = reward_run / "step_000060"
    assert json.loads((step / "config.json").read_text())["kind"] == "reward"
    with pytest.raises(GhoulError, match="not a reward model"):
        load_reward_model(tiny_model)
    with pytest.raises(GhoulError, match="is a reward model, not a language model: give a language model"):
        load_model_and_tokenizer(reward_run)  # generation, evaluation, DPO and PPO need a language model


def test_reward_judge_and_score(reward_run, tmp_path, capsys):
    judge = make_judge(f"reward:{reward_run}")
    assert isinstance(judge, RewardJudge) and judge.name == f"reward:{reward_run}"
    texts = ["In the attic the door was cold", f"In the attic the{MARKER} was cold", "In the attic dark night"]
    judgment = judge.judge("Pick the scariest story.", texts)
    assert judgment.best == 1 and len(json.loads(judgment.raw)) == 3
    with pytest.raises(GhoulError, match="reward:DIR"):
        make_judge("reward")
    stories = tmp_path / "stories.jsonl"
    stories.write_text("".join(json.dumps(dict(id=i, prompt="In the attic", text=t[len("In the attic"):])) + "\n"
                               for i, t in enumerate(texts)))
    assert main(["reward", "score", "--model", str(reward_run), "--stories", str(stories),
                 "--out", str(tmp_path / "scored.jsonl"), "--device", "cpu"]) == 0
    scored = read_jsonl(tmp_path / "scored.jsonl")
    assert max(scored, key=lambda r: r["reward"])["id"] == 1
    (tmp_path / "none.jsonl").write_text("")
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "In the attic"}\n')  # the user's, not scored stories
    for args, message in [(["--batch-size", "0"], "--batch-size must be at least 1"),
                          (["--stories", str(tmp_path / "none.jsonl")], "holds no stories"),
                          (["--out", str(stories)], "is also an input"),
                          (["--out", str(resolve_checkpoint(reward_run) / "config.json")], "is inside"),
                          (["--out", str(tmp_path / "prompts.jsonl")], "is not an earlier output")]:
        assert main(["reward", "score", "--model", str(reward_run), "--stories", str(stories), *args]) == 2
        assert message in capsys.readouterr().err


def test_reward_training_resumes_exactly(tiny_model, marker_data, tmp_path):
    args = ["reward", "train", "--base-model", str(tiny_model), "--rankings", str(marker_data), "--max-steps", "6",
            "--learning-rate", "3e-3", "--batch-size", "4", "--eval-every", "0", "--checkpoint-every", "3",
            "--device", "cpu"]
    assert main(args + ["--output-dir", str(tmp_path / "a")]) == 0
    assert main(args + ["--output-dir", str(tmp_path / "b")]) == 0
    assert main(args + ["--output-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "b" / "step_000003")]) == 0
    a, _ = load_reward_model(tmp_path / "a")
    b, _ = load_reward_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))


def test_a_file_of_yours_under_the_pairs_name_is_kept(tiny_model, marker_data, tmp_path, capsys):
    # the run writes the pairs it trains on to RUN/preferences.jsonl: never over a file that holds no pairs
    out = tmp_path / "run"
    out.mkdir()
    (out / "preferences.jsonl").write_text("my notes on the stories\n")
    assert main(["reward", "train", "--base-model", str(tiny_model), "--rankings", str(marker_data), "--output-dir",
                 str(out), "--max-steps", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"ghoul reward train: error: {out / 'preferences.jsonl'} exists and is not an earlier output of "
                   "this command: give another --output-dir, or move it away first"], err
    assert sorted(out.iterdir()) == [out / "preferences.jsonl"]
    assert (out / "preferences.jsonl").read_text() == "my notes on the stories\n"


def test_reward_train_needs_pairs_and_a_base_model(tmp_path, capsys):
    assert main(["reward", "train", "--base-model", str(tmp_path)]) == 2
    assert "--preferences FILE" in capsys.readouterr().err
    assert main(["reward", "train", "--rankings", "r.jsonl"]) == 2
    assert "--base-model is required" in capsys.readouterr().err


@pytest.mark.parametrize("tied", [True, False])
def test_reward_model_has_no_language_model_head(tied):
    """The head it would not use is not there: its backbone's weights are all it takes from the language model."""
    torch.manual_seed(0)
    gpt = GPT(GPTConfig.from_name("tiny", tie_embeddings=tied))
    model = RewardModel.from_gpt(gpt)
    assert not any(name.startswith("lm_head") for name, _ in model.named_parameters())
    assert torch.equal(model.transformer.wte.weight, gpt.transformer.wte.weight)
    trunk = model.num_params() - model.score.weight.numel() - model.score.bias.numel()
    assert trunk == gpt.num_params() - (0 if tied else gpt.lm_head.weight.numel())


def test_untied_base_trains_under_two_torchrun_ranks(marker_data, tmp_path):
    """Every parameter gets a gradient, as DDP requires: with an unused lm_head the second step stopped ("Expected
    to have finished reduction in the prior iteration")."""
    base, run = tmp_path / "untied", tmp_path / "run"
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny", tie_embeddings=False)), base)
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                           "ghoul", "reward", "train", "--base-model", str(base), "--rankings", str(marker_data),
                           "--max-steps", "4", "--batch-size", "2", "--eval-every", "0", "--device", "cpu",
                           "--output-dir", str(run)],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    model, _ = load_reward_model(run)
    assert "lm_head.weight" not in model.state_dict() and model.score.weight.abs().sum() > 0
