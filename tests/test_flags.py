"""Every command offers exactly what it uses: each of its options is read by a run of the command (passed on to the
code that acts on it), or refused with a one-line error when given (tests/options.py says how that is checked).
`ghoul pipeline` and `ghoul report` are checked on the reduced pipeline run of tests/test_pipeline.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.cli import COMMANDS, main
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.model import GPT, GPTConfig
from tests.feedback.prefdata import write_marker_rankings
from tests.options import check_options_used


@pytest.fixture(scope="module")
def inputs(data, tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("flags")
    shards = root / "shards"
    prepare(PrepareConfig(source="creepypasta", source_path=str(data / "creepypasta" / "reddit_horror_stories.jsonl"),
                          out=shards, val_tokens=4096, workers=1, limit_docs=60, progress=False))
    torch.manual_seed(0)
    model = root / "tiny"
    save_model_dir(GPT(GPTConfig.from_name("tiny")), model)
    rankings = write_marker_rankings(root / "prefs", groups=8)
    return {"shards": str(shards), "model": str(model), "rankings": str(rankings),
            "hellaswag": str(data / "hellaswag" / "hellaswag_val_first100.jsonl"),
            "stories": str(data / "creepypasta" / "reddit_horror_stories.jsonl")}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TRAIN = ["--batch-size", "2", "--max-steps", "2", "--warmup-iters", "1", "--warmdown-iters", "1", "--eval-every", "1",
         "--eval-iters", "1", "--checkpoint-every", "1", "--keep-last", "1", "--device", "cpu"]


def test_pretrain_and_finetune_use_every_option(inputs, tmp_path, capsys):
    shards = ["--dataset", inputs["shards"], "--seq-len", "32", "--total-batch-size", "128", "--hellaswag-every", "2",
              "--hellaswag-limit", "2", "--hellaswag-path", inputs["hellaswag"], "--sample-every", "2",
              "--sample-prompt", "The", "--sample-tokens", "4", *TRAIN]
    check_options_used(["pretrain", "--model", "tiny", "--output-dir", str(tmp_path / "pre"), *shards], tmp_path,
                       capsys)
    check_options_used(["finetune", "--base-model", str(tmp_path / "pre"), "--output-dir", str(tmp_path / "ft"),
                        *shards], tmp_path, capsys)


@pytest.mark.parametrize("command", [["dpo", "--policy"], ["reward", "train", "--base-model"]])
def test_pair_trainers_use_every_option(command, inputs, tmp_path, capsys):
    check_options_used([*command, inputs["model"], "--rankings", inputs["rankings"], "--total-batch-size", "4",
                        "--val-fraction", "0.25", "--output-dir", str(tmp_path / "run"), *TRAIN], tmp_path, capsys)


@pytest.mark.parametrize("method", ["winners", "dpo", "ppo", "grpo"])
def test_rlhf_uses_or_refuses_every_option(method, inputs, tmp_path, capsys):
    training = {
        "winners": ["--batch-size", "1", "--seq-len", "8", "--total-batch-size", "16", "--warmdown-iters", "1"],
        "dpo": ["--batch-size", "2", "--total-batch-size", "4", "--beta", "0.2", "--warmdown-iters", "1"],
    }.get(method, ["--prompts-per-step", "2", "--kl-coef", "0.1", "--reward-steps", "2",
                   "--reward-learning-rate", "1e-3"])
    check_options_used(["rlhf", "--method", method, "--base-model", inputs["model"], "--judge", "length",
                        "--output-dir", str(tmp_path / "run"), "--num-samples", "16", "--max-new-tokens", "8",
                        "--generate-batch-size", "4", "--max-steps", "2", "--learning-rate", "1e-3",
                        "--device", "cpu", *training], tmp_path, capsys)


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_ppo_and_grpo_use_or_refuse_every_option(method, inputs, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("The door\nThe night\n")
    check_options_used([method, "--policy", inputs["model"], "--judge", "length", "--task", "Pick one.",
                        "--prompts-file", str(prompts), "--max-steps", "2", "--prompts-per-step", "2",
                        "--group-size", "2", "--max-new-tokens", "4", "--checkpoint-every", "1",
                        "--output-dir", str(tmp_path / "run"), "--device", "cpu"], tmp_path, capsys)


def test_learn_gpt_uses_every_option(data, tmp_path, capsys):
    check_options_used(["learn", "gpt", "--source-path", str(data / "creepypasta" / "reddit_horror_stories.jsonl"),
                        "--output-dir", str(tmp_path / "run"), "--limit-docs", "10", "--tokenizer-kind", "char",
                        "--steps", "2", "--batch-size", "2", "--block-size", "32", "--eval-iters", "1",
                        "--n-layer", "1", "--n-embd", "32", "--sample-tokens", "2", "--warmup-iters", "0",
                        "--device", "cpu"], tmp_path, capsys)


@pytest.fixture(scope="module")
def feedback(inputs, tmp_path_factory) -> dict[str, str]:
    """Stories of the tiny model, a length judge's rankings of them, and a reward model trained on those."""
    root = tmp_path_factory.mktemp("feedback")
    stories, rankings = root / "stories.jsonl", root / "rankings.jsonl"
    assert main(["generate", "--checkpoint", inputs["model"], "--prompt", "The door", "--num-samples", "16",
                 "--max-new-tokens", "8", "--device", "cpu", "--out", str(stories), "--no-print-samples"]) == 0
    assert main(["rank", "--stories", str(stories), "--out", str(rankings), "--judge", "length"]) == 0
    assert main(["reward", "train", "--base-model", inputs["model"], "--rankings", str(rankings), "--max-steps", "1",
                 "--batch-size", "2", "--output-dir", str(root / "reward"), "--device", "cpu"]) == 0
    return {"stories": str(stories), "rankings": str(rankings), "reward": str(root / "reward")}


def test_sampling_evaluation_and_export_commands_use_every_option(inputs, tmp_path, capsys):
    model, shards = inputs["model"], inputs["shards"]
    for argv in (
        ["generate", "--checkpoint", model, "--prompt", "The", "--num-samples", "2", "--max-new-tokens", "4",
         "--temperature", "0.9", "--top-k", "50", "--top-p", "0.9", "--seed", "3", "--batch-size", "2", "--device",
         "cpu", "--out", str(tmp_path / "g.jsonl"), "--no-print-samples"],
        ["eval", "loss", "--checkpoint", model, "--data", shards, "--split", "val", "--tokens", "256", "--batch-size",
         "2", "--seq-len", "32", "--dtype", "float32", "--device", "cpu"],
        ["eval", "hellaswag", "--checkpoint", model, "--data-path", inputs["hellaswag"], "--limit", "2",
         "--batch-size", "2", "--dtype", "float32", "--device", "cpu", "--out", str(tmp_path / "hs.json")],
        ["export", "hf", model, str(tmp_path / "hf")],
        ["export", "gguf", model, str(tmp_path / "gguf" / "m.gguf"), "--dtype", "f32"],
        ["plan", "--model", "gpt2", "--gpus", "2", "--gpu", "a100-40gb", "--total-batch-size", "16384",
         "--batch-size", "8", "--seq-len", "1024", "--max-steps", "10", "--dtype", "float32", "--optimizer", "muon",
         "--activation-checkpointing", "--no-pad-vocab", "--mfu", "0.4", "--price-per-gpu-hour", "2"],
    ):
        check_options_used(argv, tmp_path, capsys)


def test_data_and_tokenizer_commands_use_every_option(inputs, data, tmp_path, capsys):
    reddit, shakespeare = inputs["stories"], next((data / "tinyshakespeare").glob("*.txt"))
    for argv in (
        ["tokenizer", "train", "--input", reddit, "--out", str(tmp_path / "tok.json"), "--vocab-size", "300",
         "--pattern", "gpt4", "--kind", "bpe", "--text-field", "selftext", "--special-tokens", "<|sep|>",
         "--no-progress"],
        ["tokenizer", "encode", "a <|endoftext|>", "--tokenizer", "gpt2", "--special"],
        ["tokenizer", "decode", "64", "65", "--tokenizer", "gpt2"],
        ["prepare", "jsonl", "--out", str(tmp_path / "jsonl"), "--tokenizer", "gpt2", "--source-path", reddit,
         "--text-field", "selftext", "--shard-tokens", "100000", "--val-tokens", "1000", "--workers", "1",
         "--limit-docs", "20", "--no-progress"],
        ["prepare", "text", "--out", str(tmp_path / "text"), "--source-path", str(shakespeare), "--separator",
         "\n\n", "--val-tokens", "1000", "--limit-docs", "50"],
    ):
        check_options_used(argv, tmp_path, capsys)


def test_feedback_commands_use_every_option(inputs, feedback, tmp_path, capsys):
    model, stories, rankings = inputs["model"], feedback["stories"], feedback["rankings"]
    for argv in (
        ["rank", "--stories", stories, "--out", str(tmp_path / "r.jsonl"), "--judge", "length", "--group-size", "2",
         "--task", "Pick one.", "--seed", "2", "--max-groups", "3", "--retry-skipped"],
        ["export", "winners", rankings, "--stories", stories, "--out", str(tmp_path / "w.txt")],
        ["preferences", "--rankings", rankings, "--stories", stories, "--out", str(tmp_path / "p.jsonl"),
         "--val-fraction", "0.25", "--seed", "2"],
        ["reward", "score", "--model", feedback["reward"], "--stories", stories, "--out", str(tmp_path / "s.jsonl"),
         "--batch-size", "2", "--device", "cpu"],
        ["compare", "--a", model, "--b", model, "--judge", "length", "--n", "2", "--prompt", "The",
         "--max-new-tokens", "4", "--temperature", "0.9", "--top-k", "50", "--top-p", "0.9", "--batch-size", "2",
         "--task", "Pick one.", "--out", str(tmp_path / "c.jsonl"), "--seed", "2", "--device", "cpu"],
    ):
        check_options_used(argv, tmp_path, capsys)


@pytest.mark.parametrize("judge, option, needs", [
    ("length", ["--timeout", "5"], "--timeout is only read with --judge openai:MODEL"),
    ("random", ["--base-url", "http://127.0.0.1:1/v1"], "--base-url is only read with --judge openai:MODEL"),
    ("openai:gpt-4o", ["--port", "9000"], "--port is only read with --judge web"),
    ("length", ["--open-browser"], "--open-browser is only read with --judge web"),
    ("length", ["--no-json-mode"], "--no-json-mode is only read with --judge openai:MODEL"),  # as it was given
])
def test_a_judges_options_are_refused_for_another_judge(judge, option, needs, feedback, tmp_path, capsys):
    """The judge options are offered together (rank, compare, rlhf, ppo, grpo); each is read by one kind of judge,
    and given for another it is refused, not ignored."""
    out = tmp_path / "r.jsonl"
    assert main(["rank", "--stories", feedback["stories"], "--out", str(out), "--judge", judge, *option]) == 2
    assert f"{needs}: leave it out" in capsys.readouterr().err and not out.exists()


def test_ppo_with_a_reward_model_refuses_the_judges_options(inputs, feedback, tmp_path, capsys):
    assert main(["ppo", "--policy", inputs["model"], "--reward", feedback["reward"], "--task", "Pick one.",
                 "--output-dir", str(tmp_path / "run"), "--device", "cpu"]) == 2
    assert "--task is only read with --judge: leave it out" in capsys.readouterr().err


def test_learning_commands_and_checkpoint_evaluation_use_every_option(data, inputs, tmp_path, capsys):
    reddit = inputs["stories"]
    learn = ["--source-path", reddit, "--limit-docs", "10", "--tokenizer-kind", "char", "--steps", "2",
             "--batch-size", "2", "--block-size", "16", "--eval-iters", "1", "--sample-tokens", "2",
             "--warmup-iters", "0", "--device", "cpu"]
    variants = tmp_path / "variants.toml"
    variants.write_text('[base]\n\n[rms]\nnorm = "rmsnorm"\n')
    run = tmp_path / "pre"
    assert main(["pretrain", "--dataset", inputs["shards"], "--model", "tiny", "--batch-size", "2", "--seq-len", "32",
                 "--max-steps", "2", "--checkpoint-every", "1", "--eval-every", "0", "--output-dir", str(run),
                 "--device", "cpu"]) == 0
    for argv in (
        ["learn", "bigram", "--output-dir", str(tmp_path / "bigram"), *learn],
        ["learn", "compare", "--output-dir", str(tmp_path / "compare"), "--variants", str(variants), "--n-layer", "1",
         "--n-head", "2", "--n-embd", "16", *learn],
        ["eval", "checkpoints", str(run), "--val-loss", "--data", inputs["shards"], "--limit", "2", "--data-path",
         inputs["hellaswag"], "--tokens", "128", "--seq-len", "32", "--batch-size", "2", "--reference",
         "gpt2-124m", "--dtype", "float32", "--device", "cpu"],
    ):
        check_options_used(argv, tmp_path, capsys)


# commands no test here runs, and where their options are checked
CHECKED_ELSEWHERE = {
    "pipeline": "tests/test_pipeline.py: the reduced pipeline run reads every option",
    "report": "tests/test_pipeline.py: the report of that run",
    "serve": "a server that runs until stopped: tests/web drive each of its options",
}
CHECKED_HERE = {"pretrain", "finetune", "dpo", "reward train", "rlhf", "ppo", "grpo", "learn gpt", "generate",
                "eval loss", "eval hellaswag", "export hf", "export gguf", "plan", "tokenizer train",
                "tokenizer encode", "tokenizer decode", "prepare", "rank", "export winners", "preferences",
                "reward score", "compare", "learn bigram", "learn compare", "eval checkpoints"}


def test_every_command_is_checked():
    assert CHECKED_HERE | set(CHECKED_ELSEWHERE) == {c.name for c in COMMANDS}
