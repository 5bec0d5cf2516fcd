"""`ghoul generate` as the story loop uses it: prompts cycled from a file, batches of one prompt, exact resume."""

from __future__ import annotations

import pytest
import torch

import ghoul.generate as gen
from ghoul.errors import GhoulError
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig


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
    GPT(GPTConfig.from_name("tiny")).save_pretrained(path)
    return path


def config(model_dir, out, **kw) -> gen.GenerateConfig:
    return gen.GenerateConfig(**{"checkpoint": model_dir, "num_samples": 10, "max_new_tokens": 8, "batch_size": 3,
                                 "device": "cpu", "out": out, "print_samples": False, "seed": 7, **kw})


def test_plan_batches_hold_one_prompt_each():
    batches = gen.plan_batches(10, 3, 2)
    assert sorted(i for b in batches for i in b) == list(range(10))
    assert all(len({i % 3 for i in b}) == 1 and len(b) <= 2 for b in batches)
    assert gen.batch_seed(1, 0) != gen.batch_seed(1, 1) != gen.batch_seed(2, 1)


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


def test_other_settings_do_not_mix_into_a_stories_file(model_dir, tmp_path):
    gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=2))
    with pytest.raises(GhoulError, match="another sampling"):
        gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=4, temperature=0.5))
    with pytest.raises(GhoulError, match="another seed"):
        gen.run(config(model_dir, tmp_path / "s.jsonl", num_samples=4, seed=8))
