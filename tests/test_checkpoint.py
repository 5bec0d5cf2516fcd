"""Model directories: save and load, atomic writes, and clear errors for damaged checkpoints."""

import json

import pytest
import torch

from ghoul.checkpoint import load_model_dir, save_model_dir
from ghoul.errors import GhoulError
from ghoul.files import atomic_directory, read_jsonl
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("tiny"))


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["n_layer"] == 2 and config["tokenizer"] == "gpt2"
    back = GPT.from_pretrained(tmp_path / "m")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert back.lm_head.weight is back.transformer.wte.weight
    assert load_tokenizer(tmp_path / "m").name == "gpt2"


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(RuntimeError):
        with atomic_directory(tmp_path / "m") as tmp:
            (tmp / "config.json").write_text("{}")
            raise RuntimeError("crash mid-write")
    assert load_model_dir(tmp_path / "m") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "config.json").write_text("{oops"), "not valid JSON"),
    (lambda d: (d / "model.safetensors").unlink(), "has no model.safetensors"),
    (lambda d: (d / "model.safetensors").write_bytes(b"garbage"), "could not be read"),
    (lambda d: (d / "config.json").write_text(json.dumps({**GPTConfig.from_name("tiny").__dict__, "n_embd": 32})),
     "does not match"),
])
def test_damaged_checkpoints_give_clear_errors(tmp_path, damage, message):
    save_model_dir(tiny(), tmp_path / "m")
    damage(tmp_path / "m")
    with pytest.raises(GhoulError, match=message):
        load_model_dir(tmp_path / "m")


def test_missing_directory(tmp_path):
    with pytest.raises(GhoulError, match="does not exist"):
        load_model_dir(tmp_path / "nope")


def test_read_jsonl_ignores_torn_last_line(tmp_path):
    path = tmp_path / "log.jsonl"
    path.write_text('{"a": 1}\n{"a": 2}\n{"a": ')
    assert read_jsonl(path) == [{"a": 1}, {"a": 2}]
    path.write_text('{"a": 1}\nbroken\n{"a": 2}\n')
    with pytest.raises(GhoulError, match="line 2"):
        read_jsonl(path)


def test_atomic_directory_never_replaces_a_file(tmp_path):
    (tmp_path / "x").write_text("a user's file")
    with pytest.raises(FileExistsError):
        with atomic_directory(tmp_path / "x") as tmp:
            (tmp / "config.json").write_text("{}")
    assert (tmp_path / "x").read_text() == "a user's file" and [p.name for p in tmp_path.iterdir()] == ["x"]


def test_a_run_directory_gives_the_tokenizer_of_its_newest_checkpoint(tmp_path):
    from ghoul.checkpoint import save_training_checkpoint
    from ghoul.tokenizer.char import CharTokenizer

    tok = CharTokenizer.train(["the attic door creaked open"])
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_embd=16, n_layer=1, n_head=2))
    run = tmp_path / "run"
    save_training_checkpoint(run, 5, model, [], {"step": 5}, tokenizer=tok)
    (run / "config.json").write_text(json.dumps({"dataset": "data/attic", "max_steps": 5}))  # the run's own settings
    loaded = load_tokenizer(run)
    assert loaded.name == "char" and loaded.encode("attic") == tok.encode("attic")
