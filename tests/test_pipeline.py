"""The whole pipeline, reduced, end to end on the CPU: every stage's output, the report's figures, and a rerun
that redoes nothing."""

import json
from itertools import pairwise

import pytest
import torch
import transformers

from ghoul.checkpoint import load_model_dir, save_model_dir
from ghoul.cli import main
from ghoul.config import option_owners
from ghoul.data.loader import ShardLoader
from ghoul.files import read_jsonl
from ghoul.model import GPT
from ghoul.pipeline import PipelineConfig
from ghoul.report import ReportConfig
from ghoul.tokenizer import load_tokenizer
from tests.options import reads
from tests.train.interrupt_rank import interrupting_next


def test_reduced_pipeline_end_to_end_and_rerun(data, tmp_path, capsys):
    torch.set_num_threads(1)  # tiny models on two busy cores: one thread is several times faster
    out = tmp_path / "run"
    args = ["pipeline", "--output-dir", str(out), "--data-dir", str(data), "--pretrain-steps", "12",
            "--finetune-steps", "4", "--preference-steps", "2", "--num-samples", "8", "--max-new-tokens", "48",
            "--hellaswag-limit", "12", "--seq-len", "64", "--batch-size", "4", "--winrate-pairs", "6",
            "--vocab-size", "512", "--eval-tokens", "2048", "--device", "cpu",
            "--prompts", "I heard something in the attic", "The well behind the house"]
    with reads([PipelineConfig]) as seen:  # every option of the pipeline reaches the stages (tests/test_flags.py)
        assert main(args) == 0
    assert {name for _, name in seen} >= set(option_owners(PipelineConfig))
    said = capsys.readouterr()
    with reads([ReportConfig]) as seen:
        assert main(["report", str(out)]) == 0
    assert {name for _, name in seen} >= set(option_owners(ReportConfig))
    for name in ("report.html", "report.md", "loss.png", "hellaswag.png", "rlhf/rankings.jsonl",
                 "samples/pretrain.jsonl", "samples/preference.jsonl", "eval/finetune.json"):
        assert (out / name).is_file(), name
    report = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    last = [r for r in read_jsonl(out / "pretrain" / "log.jsonl") if "loss" in r][-1]
    finetune_eval = json.loads((out / "eval" / "finetune.json").read_text())
    assert finetune_eval["val_tokens"] == 2048  # 32 windows of 64 held-out tokens
    # each stage's evaluation is said as it is made; the training stages' validation names its sample's size
    assert (f"ghoul pipeline [eval] finetune: {finetune_eval['val_bpb']:.4f} bits per byte "
            f"({finetune_eval['val_loss']:.4f} nats per token) on 2,048 held-out tokens of stories; HellaSwag acc_norm "
            f"{finetune_eval['hellaswag_acc']:.1%} of 12") in said.err
    assert said.out.count("bits per byte, 2,560 validation tokens)") == 2  # 10 batches of 4 x 64, in each stage
    note = "on 2,048 held-out tokens (the evaluation points in the plot). The curves were measured during training " \
        "on the first 2,560 held-out tokens"
    assert note in report and note in html
    # one warmup-stable-decay schedule across the stages: pretraining holds its peak rate to the end, the fine-tune
    # stage starts there without a warmup and decays to zero
    finetune_lrs = [r["lr"] for r in read_jsonl(out / "finetune" / "log.jsonl") if "lr" in r]
    assert last["lr"] == pytest.approx(0.02) and finetune_lrs[0] == pytest.approx(0.02)
    assert all(a > b for a, b in pairwise(finetune_lrs)) and finetune_lrs[-1] < 0.02 / 3
    assert f"| pretrain | 12 | {last['tokens']:,} |" in report and f"{last['loss']:.4f}" in report
    assert f"{finetune_eval['val_loss']:.4f}" in report and f"{finetune_eval['val_loss']:.4f}" in html
    assert "Judge `length` (picks the longest story: a baseline that measures length, not quality): 2 groups of 4 " \
        "judged, 0 skipped" in report
    assert "this figure is circular" in report  # the win-rate's judge is the one whose picks were trained on
    # pretraining reads the stories and Lovecraft, the fine-tune stage the stories alone, whose held-out ones score
    assert json.loads((out / "pretrain" / "config.json").read_text())["dataset"] == str(out / "data" / "horror")
    assert json.loads((out / "finetune" / "config.json").read_text())["dataset"] == str(out / "data" / "stories")
    assert any("Cthulhu" in r["text"] for r in read_jsonl(out / "data" / "text" / "horror.jsonl"))
    tokenizer = load_tokenizer(out / "finetune")  # the run's own BPE, trained on its text, in every checkpoint
    assert tokenizer.name == "bpe" and tokenizer.vocab_size == 512
    assert (out / "data" / "tokenizer.json").read_text() == (out / "pretrain" / "step_000012" / "tokenizer.json"
                                                              ).read_text()
    # the judged stories come from the whole distribution (a fine-tune on them would learn a truncation); the
    # report's samples, for reading, leave out the unlikeliest tokens
    assert all(s["sampling"]["top_k"] is None for s in read_jsonl(out / "rlhf" / "stories.jsonl"))
    assert all(s["sampling"] == dict(temperature=0.8, top_k=50, top_p=None, max_new_tokens=48)
               for s in read_jsonl(out / "samples" / "preference.jsonl"))
    winrate = json.loads((out / "eval" / "winrate.json").read_text())
    pairs = read_jsonl(out / "eval" / "winrate-pairs.jsonl")
    assert len(pairs) == 6 and winrate["wins_a"] == sum(p["winner"] == "a" for p in pairs)
    assert winrate["wins_a"] + winrate["wins_b"] + winrate["skipped"] == 6
    longer_wins = sum((len(p["a"]) > len(p["b"])) == (p["winner"] == "a") for p in pairs if len(p["a"]) != len(p["b"]))
    assert longer_wins == sum(len(p["a"]) != len(p["b"]) for p in pairs)  # the length judge picked the longer story
    sentence = f"beats the finetune model in {winrate['wins_a']} of {winrate['wins_a'] + winrate['wins_b']} pairs"
    assert sentence in report and sentence in html
    sample = read_jsonl(out / "samples" / "finetune.jsonl")[0]
    assert f"**finetune**: {' '.join((sample['prompt'] + sample['text']).split())}" in report  # no word glued
    assert html.count("data:image/png;base64,") == 2 and "http" not in html.split("<pre>")[0]  # self-contained
    # the run's model runs in transformers as it is: its architecture without custom code, its own tokenizer
    assert main(["export", "hf", str(out / "finetune"), str(tmp_path / "hf")]) == 0
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    model = load_model_dir(out / "finetune").eval()
    prompt = torch.tensor([tokenizer.encode("I heard something in the attic")])
    assert hf_tokenizer("I heard something in the attic")["input_ids"] == prompt[0].tolist()
    ours = model.generate(prompt, 32, temperature=0)
    theirs = hf_model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=32, do_sample=False,
                               eos_token_id=None)
    assert theirs.tolist() == ours.tolist()
    checkpoint = out / "pretrain" / "step_000012" / "model.safetensors"
    before = checkpoint.stat().st_mtime_ns
    # the report's samples as an earlier version sampled them: a rerun makes them anew instead of refusing the file
    samples = out / "samples" / "finetune.jsonl"
    first = read_jsonl(samples)
    samples.write_text("".join(json.dumps({**r, "sampling": {**r["sampling"], "temperature": 1.0, "top_k": 200,
                                                             "top_p": None}}) + "\n" for r in first))
    capsys.readouterr()
    assert main(args) == 0
    assert checkpoint.stat().st_mtime_ns == before
    assert read_jsonl(samples) == first  # the same seeds, so the same stories
    err = capsys.readouterr().err
    assert "pretrain has finished; skipped" in err and "eval/pretrain.json exists; skipped" in err
    assert "eval/winrate.json exists; skipped" in err
    # another judge for the win-rate: measured again, and the report says the figure is not circular
    assert main([*args, "--winrate-judge", "random"]) == 0
    winrate = json.loads((out / "eval" / "winrate.json").read_text())
    assert (winrate["judge"], winrate["training_judge"]) == ("random", "length")
    report = (out / "report.md").read_text()
    assert "picked by length; this figure comes from another judge, random (picks at random" in report
    assert "circular" not in report
    # an option that shaped the finished stages is refused on a rerun, not silently ignored; the run stays as it was
    made_with = (out / "pipeline.json").read_text()
    capsys.readouterr()
    assert main([*args, "--vocab-size", "1024"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out} holds a run made with --vocab-size 512, not 1024: rerun it with" in err[0]
    assert (out / "pipeline.json").read_text() == made_with


def short_run(data, out, preference_steps=1) -> list[str]:
    """A pipeline of a few steps a stage, for the tests that stop and go on."""
    return ["pipeline", "--output-dir", str(out), "--data-dir", str(data), "--pretrain-steps", "6", "--finetune-steps",
            "2", "--preference-steps", str(preference_steps), "--num-samples", "8", "--max-new-tokens", "48",
            "--hellaswag-limit", "4", "--seq-len", "64", "--batch-size", "4", "--winrate-pairs", "2", "--vocab-size",
            "300", "--eval-tokens", "512", "--device", "cpu", "--prompts", "The well behind the house",
            "I heard something in the attic"]


def test_an_interrupted_pipeline_says_how_to_go_on_and_a_rerun_continues_it(data, tmp_path, monkeypatch, capsys):
    """A Ctrl-C in a stage names what the pipeline's user can do (rerun the command; it has no --resume), and the
    rerun continues that stage from its checkpoint: each step once."""
    torch.set_num_threads(1)
    out = tmp_path / "run"
    args = short_run(data, out)
    monkeypatch.setattr(ShardLoader, "__next__", interrupting_next({4}, "train"))
    assert main(args) == 130
    said = capsys.readouterr().out
    assert f"interrupted after step 4: saved {out / 'pretrain' / 'step_000004'}; run the same command again to " \
        "continue" in said and "--resume" not in said
    monkeypatch.undo()
    assert main(args) == 0
    assert [r["step"] for r in read_jsonl(out / "pretrain" / "log.jsonl") if "loss" in r] == [1, 2, 3, 4, 5, 6]
    # a damaged checkpoint: the way past it in the pipeline's words, which has no --resume DIR
    newest = max((out / "finetune").glob("step_*"))
    (newest / "trainer_state.json").write_text('{"step": 2,')
    capsys.readouterr()
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(err) == 1 and f"{newest} is damaged" in err[0] and "--resume" not in err[0]
    assert "move the checkpoint out of its run directory and run the same command again" in err[0]


def test_a_run_directory_moved_or_renamed_goes_on(data, tmp_path, monkeypatch, capsys):
    """A run interrupted in its preference stage, then renamed, continues where it stopped when run again under its
    new name: its shards, finished stages and evaluations are taken as they are, the stage resumes its checkpoint."""
    torch.set_num_threads(1)
    # training batches 1-6 pretrain, 7-8 fine-tune, 9-11 the preference stage: a Ctrl-C as it reads batch 10 stops
    # it after its step 2
    monkeypatch.setattr(ShardLoader, "__next__", interrupting_next({10}, "train"))
    assert main(short_run(data, tmp_path / "run", preference_steps=3)) == 130
    monkeypatch.undo()
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(short_run(data, moved, preference_steps=3)) == 0
    said = capsys.readouterr()
    for skipped in ("data/stories is already prepared", "pretrain has finished; skipped",
                    "eval/pretrain.json exists; skipped", "eval/finetune.json exists; skipped",
                    "rlhf/stories.jsonl is complete; skipped", "rlhf/data/winners is already prepared"):
        assert skipped in said.out + said.err, skipped
    assert [r["step"] for r in read_jsonl(moved / "rlhf" / "finetune" / "log.jsonl") if "loss" in r] == [1, 2, 3]
    assert (moved / "report.md").is_file()


def test_too_little_data_for_a_step_says_what_would_help_in_the_stage_it_stops(data, tmp_path, capsys):
    """A step larger than a training stage's text stops before pretraining, not after it; whole pairs too few for
    grpo's reward model need more stories, which a shorter --seq-len would not give."""
    torch.set_num_threads(1)
    assert main([*short_run(data, tmp_path / "big"), "--batch-size", "100000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "train tokens are too few for one step" in err
    assert err.endswith(": lower --batch-size or --seq-len, and run the pipeline into a new --output-dir"), err
    assert not (tmp_path / "big" / "pretrain").exists()
    assert main([*short_run(data, tmp_path / "grpo"), "--method", "grpo"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "preference pairs are too few for one step" in err and "--seq-len" not in err
    assert err.endswith(": raise --num-samples or --max-new-tokens for more stories, and run the pipeline into a new "
                        "--output-dir"), err


def test_pipeline_refuses_bad_settings(tmp_path, capsys):
    assert main(["pipeline", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["pipeline", "--data-dir", str(tmp_path), "--num-samples", "4"]) == 2
    assert "give at least 12" in capsys.readouterr().err
    assert main(["pipeline", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run"),
                 "--winrate-judge", "nosuch"]) == 2
    assert "unknown judge 'nosuch'" in capsys.readouterr().err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--tokenizer", "gpt2", "--vocab-size", "512"], "--vocab-size is only read with --tokenizer bpe"),
    (["--optimizer", "adamw", "--muon-lr", "0.05"], "--muon-lr is only read with --optimizer muon"),
    # named as the pipeline's flags, before any stage runs (a rate of 0 divided Muon's scaling: a traceback)
    (["--pretrain-lr", "0"], "--pretrain-lr must be positive, got 0.0"),
    (["--finetune-lr", "nan"], "--finetune-lr must be positive, got nan"),
    (["--eval-tokens", "100"], "--eval-tokens 100 are fewer than one window of --seq-len 256: give at least 256"),
    (["--prompts", "The well", " "], "--prompts needs at least one prompt, and no empty one"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
])
def test_pipeline_refuses_bad_options_before_any_stage(tmp_path, capsys, args, message):
    assert main(["pipeline", "--data-dir", str(tmp_path), "--output-dir", str(tmp_path / "run"), *args]) == 2
    assert message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_an_evaluation_is_reused_only_for_the_same_checkpoint_and_settings(data, tmp_path, monkeypatch):
    from ghoul.data.prepare import PrepareConfig
    from ghoul.data.prepare import run as prepare
    from ghoul.model import GPTConfig
    from ghoul.pipeline import PipelineConfig, evaluate

    shards = tmp_path / "fineweb"
    prepare(PrepareConfig(source="fineweb", source_path=str(data / "fineweb" / "fineweb_subset.jsonl"), out=shards,
                          val_tokens=4096, workers=1, limit_docs=40, progress=False))
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "model")
    cfg = dict(output_dir=tmp_path / "run", data_dir=data, seq_len=64, device="cpu")
    first = evaluate(PipelineConfig(**cfg, hellaswag_limit=4), "pretrain", tmp_path / "model", shards)
    assert first["hellaswag_n"] == 4
    monkeypatch.setattr("ghoul.eval.hellaswag.evaluate_hellaswag", None)  # reuse must not evaluate at all
    assert evaluate(PipelineConfig(**cfg, hellaswag_limit=4), "pretrain", tmp_path / "model", shards) == first
    monkeypatch.undo()
    again = evaluate(PipelineConfig(**cfg, hellaswag_limit=6), "pretrain", tmp_path / "model", shards)
    assert again["hellaswag_n"] == 6 and again["val_loss"] == first["val_loss"]
    fewer = evaluate(PipelineConfig(**cfg, hellaswag_limit=6, eval_tokens=640), "pretrain", tmp_path / "model", shards)
    assert fewer["val_tokens"] == 640 < first["val_tokens"] and fewer["val_loss"] != first["val_loss"]


def test_a_first_try_that_made_nothing_binds_no_option(tmp_path, capsys):
    # a run stopped before its first stage (here: its data folder is empty) holds only the options it was given,
    # so the next try may change them; before, it was refused as "a run made with" them
    (tmp_path / "empty").mkdir()
    out = tmp_path / "run"
    args = ["pipeline", "--output-dir", str(out), "--data-dir", str(tmp_path / "empty"), "--device", "cpu"]
    assert main(args) == 2
    assert "is missing: --data-dir must be laid out as shared/data" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["pipeline.json"]
    assert main([*args, "--vocab-size", "1024"]) == 2
    err = capsys.readouterr().err
    assert "is missing: --data-dir must be laid out" in err and "holds a run made with" not in err, err
    assert json.loads((out / "pipeline.json").read_text())["vocab_size"] == 1024
