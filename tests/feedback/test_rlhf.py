"""`ghoul rlhf`: generate, rank and fine-tune on the winners from configs/tiny-rlhf.toml, resumable at any step."""

from __future__ import annotations

import json
import os

import pytest

from ghoul.checkpoint import load_model_and_tokenizer
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.feedback.rlhf import RlhfConfig
from ghoul.files import read_jsonl
from tests.conftest import REPO
from tests.feedback.conftest import save_tiny_model

CONFIG = REPO / "configs" / "tiny-rlhf.toml"


def test_rlhf_runs_end_to_end_and_resumes(tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["rlhf", "--config", str(CONFIG), "--judge", "length", "--base-model", str(tiny_model),
            "--output-dir", str(run), "--num-samples", "32", "--max-new-tokens", "32", "--max-steps", "4"]
    assert main(args) == 0
    stories, rankings = read_jsonl(run / "stories.jsonl"), read_jsonl(run / "rankings.jsonl")
    assert len(stories) == 32 and len(rankings) == 8
    assert all(s["prompt"] == "I heard something in the attic" for s in stories)
    assert all(r["judge"] == "length" and r["chosen"] in r["shown"] for r in rankings)
    assert len(read_jsonl(run / "winners.jsonl")) == 8
    assert json.loads((run / "data" / "winners" / "meta.json").read_text())["complete"]
    model, _ = load_model_and_tokenizer(run / "finetune")
    state = json.loads((run / "finetune" / "step_000004" / "trainer_state.json").read_text())
    assert state["step"] == 4 and model.config.n_layer == 2
    assert json.loads((run / "config.json").read_text())["judge"] == "length"
    assert "warning" not in capsys.readouterr().err  # the config samples from the whole distribution

    before = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != "config.json"}
    assert main(args) == 0  # everything is done: every step is skipped
    err = capsys.readouterr().err
    assert "stories.jsonl is complete; skipped" in err and "all 8 groups are judged" in err
    assert "finished its 4 steps; skipped" in err
    assert before == {p: p.stat().st_mtime_ns for p in before}
    # the same base model written another way (relative): the same run, continued
    relative = [os.path.relpath(a) if a == str(tiny_model) else a for a in args]
    assert main(relative) == 0 and "stories.jsonl is complete; skipped" in capsys.readouterr().err
    # the stories were made with another temperature: refused, not skipped as complete; the run stays as it was
    made_with = (run / "config.json").read_text()
    assert main([*args, "--temperature", "0.55"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run} holds a run made with --temperature 1.0, not 0.55: rerun it with" in err[0], err
    assert (run / "config.json").read_text() == made_with and before == {p: p.stat().st_mtime_ns for p in before}
    # more stories than the rankings' groups were cut from: refused before a story is added, not after (the grouping
    # of 36 would no longer match the judged groups, and the run could not go on with its own options either)
    assert main([*args, "--num-samples", "36"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run} holds a run made with --num-samples 32, not 36: rerun it with" in err[0], err
    assert (run / "config.json").read_text() == made_with and before == {p: p.stat().st_mtime_ns for p in before}
    assert main(args) == 0 and "stories.jsonl is complete; skipped" in capsys.readouterr().err


def test_rlhf_writes_only_into_a_feedback_run_of_its_own(tiny_model, tmp_path, capsys):
    # a model directory, a training run and a folder of the user's own each hold a config.json rlhf would replace
    model = save_tiny_model(tmp_path / "model", seed=0)
    training = tmp_path / "pretraining"
    training.mkdir()
    (training / "config.json").write_text(json.dumps({"output_dir": str(training), "resume": None, "seed": 1}))
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}')
    for out in (model, training, mine):
        before = {p: p.read_bytes() for p in out.iterdir()}
        args = ["rlhf", "--config", str(CONFIG), "--judge", "length", "--base-model", str(tiny_model),
                "--output-dir", str(out), "--num-samples", "8", "--max-new-tokens", "8"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"ghoul rlhf: error: {out} holds another kind of run or a model (its config.json is not a "
                       "feedback run's): give another --output-dir"], err
        assert {p: p.read_bytes() for p in out.iterdir()} == before


def test_rlhf_resumes_an_interrupted_fine_tune(tiny_model, tmp_path):
    run = tmp_path / "run"
    args = ["rlhf", "--config", str(CONFIG), "--judge", "random", "--base-model", str(tiny_model),
            "--output-dir", str(run), "--num-samples", "16", "--max-new-tokens", "32", "--batch-size", "2",
            "--max-steps", "2", "--warmdown-iters", "0"]
    assert main(args) == 0
    assert main(args[:-4] + ["--max-steps", "3", "--warmdown-iters", "0"]) == 0  # one step more: resumed, not redone
    log = read_jsonl(run / "finetune" / "log.jsonl")
    assert [r["step"] for r in log if "loss" in r] == [1, 2, 3]


def test_rlhf_warns_when_the_winners_learn_from_truncated_samples(tiny_model, tmp_path, capsys):
    args = ["rlhf", "--config", str(CONFIG), "--judge", "random", "--base-model", str(tiny_model),
            "--output-dir", str(tmp_path / "run"), "--num-samples", "8", "--max-new-tokens", "8", "--max-steps", "2",
            "--batch-size", "1", "--seq-len", "16", "--top-k", "50", "--temperature", "0.8"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "warning: --top-k 50 --temperature 0.8 cuts off the unlikeliest tokens" in err
    assert all(s["sampling"]["top_k"] == 50 for s in read_jsonl(tmp_path / "run" / "stories.jsonl"))


def test_too_few_winners_for_one_step_say_what_a_rerun_may_change(tiny_model, tmp_path, capsys):
    args = ["rlhf", "--config", str(CONFIG), "--judge", "random", "--base-model", str(tiny_model),
            "--output-dir", str(tmp_path / "run"), "--num-samples", "8", "--max-new-tokens", "8", "--max-steps", "2",
            "--batch-size", "16", "--seq-len", "64"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "tokens are too few for one step" in err and err.endswith(
        "lower --batch-size or --seq-len and run the same command again, or make more stories (--num-samples, "
        "--max-new-tokens) into a new --output-dir"), err
    assert main([*args[:-4], "--batch-size", "1", "--seq-len", "16"]) == 0  # the training options may change
    # grpo's reward model reads neither option (a rerun with them is refused): only more stories help
    args = ["rlhf", "--config", str(CONFIG), "--method", "grpo", "--judge", "length", "--base-model", str(tiny_model),
            "--output-dir", str(tmp_path / "grpo"), "--num-samples", "8", "--group-size", "4", "--max-new-tokens", "8",
            "--max-steps", "1", "--reward-steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "too few" in err and err.endswith(": make more stories (--num-samples, --max-new-tokens) into a new "
                                             "--output-dir"), err


@pytest.mark.parametrize("method", ["dpo", "ppo", "grpo"])
def test_rlhf_method_switches_the_final_stage(method, tiny_model, tmp_path, capsys):
    run = tmp_path / "run"
    args = ["rlhf", "--config", str(CONFIG), "--method", method, "--judge", "length", "--base-model",
            str(tiny_model), "--output-dir", str(run), "--num-samples", "16", "--max-new-tokens", "16",
            "--max-steps", "2", *(["--batch-size", "2"] if method == "dpo" else
                                  ["--prompts-per-step", "2", "--reward-steps", "4"])]
    assert main(args) == 0
    assert len(read_jsonl(run / "rankings.jsonl")) == 4 and not (run / "winners.jsonl").exists()
    final = run / method
    assert (final / "latest").read_text().strip() == "step_000002"
    model, _ = load_model_and_tokenizer(final)
    assert type(model).__name__ == "GPT"
    log = read_jsonl(final / "log.jsonl")
    key = "reward_margin" if method == "dpo" else "reward_mean"
    assert [r["step"] for r in log if key in r] == [1, 2]
    if method != "dpo":  # a reward model trained on the rankings scored the rollouts
        assert json.loads((run / "reward" / "step_000004" / "config.json").read_text())["kind"] == "reward"
    capsys.readouterr()
    assert main(args) == 0  # finished: the training steps are skipped
    assert "finished its 2 steps; skipped" in capsys.readouterr().err


def test_rlhf_refusals(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit):  # argparse's own error for a choice not offered
        main(["rlhf", "--config", str(CONFIG), "--method", "sft", "--base-model", str(tiny_model)])
    assert "invalid choice: 'sft'" in capsys.readouterr().err
    with pytest.raises(GhoulError, match="--base-model is required"):
        RlhfConfig()
    out = tmp_path / "r"
    for args, message in [(["--method", "ppo", "--reward-steps", "0"], "--reward-steps must be at least 1, got 0"),
                          (["--num-samples", "3"], "--num-samples 3 makes no group of --group-size 4"),
                          (["--seq-len", "4096"], "--seq-len 4096 exceeds the block size"),
                          (["--method", "ppo", "--batch-size", "2"],
                           "--batch-size is not used by --method ppo (only by dpo and winners): leave it out"),
                          (["--method", "dpo", "--seq-len", "64"], "--seq-len is not used by --method dpo"),
                          (["--method", "grpo", "--max-new-tokens", "128"],  # the tiny model's context: 128
                           "prompt + --max-new-tokens exceed the model's context of 128")]:
        assert main(["rlhf", "--config", str(CONFIG), "--base-model", str(tiny_model), "--judge", "length",
                     "--output-dir", str(out), *args]) == 2
        assert message in capsys.readouterr().err and not out.exists()  # refused before any story is generated
