"""`ghoul generate` as the story loop uses it: prompts cycled from a file, batches of one prompt, exact resume."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import pytest
import torch

import ghoul.generate as gen
from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig
from tests.conftest import fail_writes_after


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: for the tiny model, OpenMP's threads waiting for each other on a busy machine cost far
    more than they compute."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "m"
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), path)
    return path


def config(model_dir, out, **kw) -> gen.GenerateConfig:
    return gen.GenerateConfig(**{"checkpoint": model_dir, "num_samples": 10, "max_new_tokens": 8, "batch_size": 3,
                                 "device": "cpu", "out": out, "print_samples": False, "seed": 7, **kw})


def test_plan_batches_hold_one_prompt_each():
    batches = gen.plan_batches(10, 3, 2)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({i % 3 for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert gen.story_seed(1, 0) != gen.story_seed(1, 1) != gen.story_seed(2, 1)


def test_prompts_file_is_cycled(model_dir, tmp_path):
    (tmp_path / "prompts.txt").write_text("The door creaked\n\nIn the cellar\n")
    stories = gen.run(config(model_dir, tmp_path / "s.jsonl", prompts_file=tmp_path / "prompts.txt"))
    assert [s["prompt"] for s in stories] == ["The door creaked", "In the cellar"] * 5
    assert [s["id"] for s in stories] == list(range(10))
    assert all(s["seed"] == 7 and s["sampling"]["max_new_tokens"] == 8 and s["checkpoint"] == str(model_dir)
               for s in stories)
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(GhoulError, match="holds no prompts"):
        gen.run(config(model_dir, None, prompts_file=tmp_path / "empty.txt"))
    with pytest.raises(GhoulError, match="not both"):
        config(model_dir, None, prompt="x", prompts_file=tmp_path / "prompts.txt")


def test_an_interrupted_run_resumes_with_identical_stories(model_dir, tmp_path, monkeypatch):
    full = gen.run(config(model_dir, tmp_path / "full.jsonl", prompt="It was dark"))
    assert len({s["text"] for s in full}) > 1  # batches draw different streams

    written = {"n": 0}
    append = gen.append_jsonl

    def crash_after_four(path, record):
        if written["n"] == 4:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a batch
        written["n"] += 1
        append(path, record)

    monkeypatch.setattr(gen, "append_jsonl", crash_after_four)
    with pytest.raises(KeyboardInterrupt):
        gen.run(config(model_dir, tmp_path / "part.jsonl", prompt="It was dark"))
    monkeypatch.setattr(gen, "append_jsonl", append)
    assert len(read_jsonl(tmp_path / "part.jsonl")) == 4
    with open(tmp_path / "part.jsonl", "a") as f:
        f.write('{"id": 9, "text": "tor')  # and a torn last line
    resumed = gen.run(config(model_dir, tmp_path / "part.jsonl", prompt="It was dark"))
    assert resumed == full
    assert sorted(read_jsonl(tmp_path / "part.jsonl"), key=lambda s: s["id"]) == full
    assert gen.run(config(model_dir, tmp_path / "part.jsonl", prompt="It was dark")) == full  # done: nothing added
    assert len(read_jsonl(tmp_path / "part.jsonl")) == 10


def test_a_story_is_the_same_whatever_the_batch_size(model_dir, tmp_path):
    """Each story draws from its own stream, seeded by (seed, id): how many are made together changes none of them,
    so a run resumed with another --batch-size (a GPU's against a laptop's) continues the same stories."""
    (tmp_path / "prompts.txt").write_text("The door creaked\nIn the cellar\n")
    runs = [gen.run(config(model_dir, None, prompts_file=tmp_path / "prompts.txt", batch_size=b, max_new_tokens=24))
            for b in (1, 2, 5)]
    assert [s["text"] for s in runs[0]] == [s["text"] for s in runs[1]] == [s["text"] for s in runs[2]]
    assert len({s["text"] for s in runs[0]}) == 10  # and no two stories share a stream
    top_k = [gen.run(config(model_dir, None, prompt="It was dark", batch_size=b, top_k=50, temperature=0.8))
             for b in (1, 4)]
    assert [s["text"] for s in top_k[0]] == [s["text"] for s in top_k[1]]


def test_other_settings_do_not_mix_into_a_stories_file(model_dir, tmp_path):
    gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=2))
    with pytest.raises(GhoulError, match="another sampling"):
        gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=4, temperature=0.5))
    with pytest.raises(GhoulError, match="another seed"):
        gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=4, seed=8))


def test_an_output_that_is_an_input_or_not_ours_is_never_cut(model_dir, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("The door creaked\nIn the cellar")  # no final newline: looks like a torn line
    with pytest.raises(GhoulError, match="is also an input"):
        gen.run(config(model_dir, prompts, prompts_file=prompts))
    assert prompts.read_text() == "The door creaked\nIn the cellar"
    for name, content in [("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe\x00"),
                          ("blob.bin", b"\x00\x01\xfe\xff" * 64),  # binary without a newline
                          ("notes.txt", b"remember the milk"),
                          ("mine.jsonl", b'{"text": "my own"}\n{"text": "torn'),
                          ("one.jsonl", b'{"id": 0, "text": "a story of another model"}\n{"id": 1, "te')]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(GhoulError):  # each a one-line error, naming the file
            gen.run(config(model_dir, path, num_samples=2))
        assert path.read_bytes() == content, name


def test_a_torn_line_ending_inside_a_character_is_repaired(model_dir, tmp_path):
    full = gen.run(config(model_dir, tmp_path / "full.jsonl", prompt="Le cœur"))
    data = (tmp_path / "full.jsonl").read_bytes()
    cut = data.index("œ".encode(), data.rstrip(b"\n").rfind(b"\n")) + 1  # killed inside a character of the last line
    (tmp_path / "part.jsonl").write_bytes(data[:cut])
    assert gen.run(config(model_dir, tmp_path / "part.jsonl", prompt="Le cœur")) == full


def save_model(path, seed):
    torch.manual_seed(seed)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), path)
    return path


def test_resume_identifies_the_model_not_how_it_was_named(model_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    save_model(run_dir / "step_000001", 1), save_model(run_dir / "step_000002", 2)
    (run_dir / "latest").write_text("step_000001\n")
    first = gen.run(config(run_dir, tmp_path / "s.jsonl", num_samples=4))
    assert first[0]["checkpoint"] == str((run_dir / "step_000001").resolve()) and first[0]["weights_sha256"]
    (run_dir / "latest").write_text("step_000002\n")  # training went on between the two calls
    with pytest.raises(GhoulError, match="another checkpoint, weights_sha256"):
        gen.run(config(run_dir, tmp_path / "s.jsonl", num_samples=10))
    # the same directory with other weights written into it
    save_model(tmp_path / "m", 1)
    gen.run(config(tmp_path / "m", tmp_path / "m.jsonl", num_samples=4))
    save_model(tmp_path / "m", 2)
    with pytest.raises(GhoulError, match="another weights_sha256"):
        gen.run(config(tmp_path / "m", tmp_path / "m.jsonl", num_samples=10))
    # the same model, named by a relative path and then by an absolute one, resumes
    monkeypatch.chdir(model_dir.parent)
    full = gen.run(config(Path(model_dir.name), tmp_path / "r.jsonl"))
    assert gen.run(config(model_dir, tmp_path / "r.jsonl")) == full
    lines = (tmp_path / "r.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "r.jsonl").write_text("".join(lines[:4]))  # as if interrupted after four stories
    assert gen.run(config(model_dir, tmp_path / "r.jsonl")) == full


def test_stories_of_a_model_moved_since_resume(tmp_path):
    """A stories file goes on after its model's directory is moved or renamed: the weights' digest says which model
    made the stories, wherever it lies now."""
    full = gen.run(config(save_model(tmp_path / "run" / "m", 1), tmp_path / "s.jsonl"))
    lines = (tmp_path / "s.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "s.jsonl").write_text("".join(lines[:4]))  # as if interrupted after four stories
    moved = (tmp_path / "run").rename(tmp_path / "moved")
    resumed = gen.run(config(moved / "m", tmp_path / "s.jsonl"))
    assert [s["text"] for s in resumed] == [s["text"] for s in full]
    assert resumed[-1]["checkpoint"] == str((moved / "m").resolve())


def test_a_huge_request_is_refused_early_and_the_plan_is_streamed(capsys):
    with pytest.raises(GhoulError, match="more than one run makes"):
        gen.GenerateConfig(num_samples=10**9)
    assert main(["generate", "--num-samples", "1000000000", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--num-samples 1,000,000,000 is more than one run makes" in err and len(err.strip().splitlines()) == 1
    tracemalloc.start()
    try:
        first = next(iter(gen.plan_batches(gen.MAX_SAMPLES, 3, 8)))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert list(first) == list(range(0, 24, 3)) and peak < 1 << 16  # no list of a million ids


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_temperature_that_is_no_number_is_refused_by_every_sampling_command(value, model_dir, tmp_path, capsys):
    common = [f"--temperature={value}", "--device", "cpu"]
    for argv in (["generate", "--checkpoint", str(model_dir), "--max-new-tokens", "2", *common],
                 ["rlhf", "--base-model", str(model_dir), "--judge", "length", "--num-samples", "4",
                  "--output-dir", str(tmp_path / "rlhf"), *common],
                 ["compare", "--a", str(model_dir), "--b", str(model_dir), "--judge", "length", "--n", "2", *common]):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "--temperature must be a finite number >= 0" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "rlhf").exists()


def generate_argv(model_dir, out) -> list[str]:
    return ["generate", "--checkpoint", str(model_dir), "--num-samples", "40", "--max-new-tokens", "8",
            "--batch-size", "3", "--device", "cpu", "--seed", "7", "--no-print-samples", "--out", str(out)]


def check_disk_full(capsys, out, expected) -> int:
    """The one-line error of a full disk, and only complete stories, each as an uninterrupted run made it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ghoul generate: error: no space left on the device of") and "Traceback" not in err
    data = out.read_bytes()
    assert data.endswith(b"\n")
    kept = read_jsonl(out)
    assert kept == expected[:len(kept)]
    return len(kept)


def test_a_full_disk_is_a_one_line_error_and_keeps_the_stories(model_dir, tmp_path, monkeypatch, capsys):
    assert main(generate_argv(model_dir, tmp_path / "full.jsonl")) == 0
    expected = sorted(read_jsonl(tmp_path / "full.jsonl"), key=lambda s: s["id"])
    monkeypatch.setattr(os, "write", fail_writes_after(5))
    assert main(generate_argv(model_dir, tmp_path / "s.jsonl")) == 2
    monkeypatch.undo()
    assert check_disk_full(capsys, tmp_path / "s.jsonl", expected) == 5
    assert main(generate_argv(model_dir, tmp_path / "s.jsonl")) == 0
    assert sorted(read_jsonl(tmp_path / "s.jsonl"), key=lambda s: s["id"]) == expected


def test_a_real_full_disk_keeps_the_stories(model_dir, tmp_path, small_disk, capsys):
    assert main(generate_argv(model_dir, tmp_path / "full.jsonl")) == 0
    expected = sorted(read_jsonl(tmp_path / "full.jsonl"), key=lambda s: s["id"])
    disk = small_disk(64 * 1024, 4096)
    assert main(generate_argv(model_dir, disk / "s.jsonl")) == 2
    assert 0 < check_disk_full(capsys, disk / "s.jsonl", expected) < 40
    (disk / "filler").unlink()
    assert main(generate_argv(model_dir, disk / "s.jsonl")) == 0
    assert sorted(read_jsonl(disk / "s.jsonl"), key=lambda s: s["id"]) == expected
