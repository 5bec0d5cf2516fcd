"""Model directories: save and load, atomic writes, and clear errors for damaged checkpoints."""

import json
import os

import pytest
import torch

from ghoul.checkpoint import load_model_dir, save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.files import atomic_directory, read_jsonl
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer


def tiny():
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("tiny"))


def test_save_and_load_round_trip(tmp_path):
    model = tiny()
    save_model_dir(model, tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["n_layer"] == 2 and config["tokenizer"] == "gpt2"
    back = load_model_dir(tmp_path / "m")
    for (k, a), (_, b) in zip(model.state_dict().items(), back.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert back.lm_head.weight is back.transformer.wte.weight
    assert load_tokenizer(tmp_path / "m").name == "gpt2"


def test_failed_write_leaves_previous_checkpoint_intact(tmp_path):
    model = tiny()
    save_model_dir(model, tmp_path / "m")
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
    (tmp_path / "notes.txt").write_text("mine")  # a file given for the model: it exists, and is named for what it is
    with pytest.raises(GhoulError, match=f"^checkpoint {tmp_path / 'notes.txt'} is a file: give a model directory"):
        load_model_dir(tmp_path / "notes.txt")


def test_a_directory_holding_models_names_them(tmp_path, capsys):
    """`--checkpoint runs/pipeline` (the pipeline's run, not a model): the error names the models in it."""
    run = tmp_path / "pipeline"
    for stage in ("pretrain", "finetune", "rlhf/finetune"):
        save_model_dir(tiny(), run / stage / "step_000002")
        (run / stage / "latest").write_text("step_000002\n")
    save_model_dir(tiny(), run / "exported")  # a model directory itself
    (run / "data" / "stories").mkdir(parents=True)
    with pytest.raises(GhoulError) as e:
        load_model_dir(run)
    inside = ", ".join(str(run / name) for name in ("exported", "finetune", "pretrain", "rlhf/finetune"))
    assert str(e.value) == f"{run} is not a model directory: config.json is missing; give one of the models in it: " \
        f"{inside}"
    assert main(["generate", "--checkpoint", str(run), "--prompt", "x"]) == 2
    assert f"give one of the models in it: {inside}" in capsys.readouterr().err
    with pytest.raises(GhoulError, match="config.json is missing$"):  # nothing to name
        load_model_dir(run / "data")


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


@pytest.mark.parametrize("umask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)])
def test_atomic_writes_follow_the_umask(tmp_path, umask, file_mode, dir_mode):
    import os
    import stat

    from ghoul.files import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "meta.json", "{}")
        save_model_dir(tiny(), tmp_path / "m")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "meta.json").stat().st_mode) == file_mode  # as open(..., "w") would make it
    assert stat.S_IMODE((tmp_path / "m").stat().st_mode) == dir_mode
    assert stat.S_IMODE((tmp_path / "m" / "config.json").stat().st_mode) == file_mode


def test_clean_temporaries_removes_leftovers_and_puts_back_an_old_copy(tmp_path):
    from ghoul.files import clean_temporaries

    (tmp_path / ".step_000004.1a2b3c4d.tmp").mkdir()
    (tmp_path / ".latest.5e6f7a8b.tmp").write_text("step_")
    (tmp_path / ".step_000002.old").mkdir()  # killed between moving the old copy aside and renaming the new one in
    (tmp_path / ".step_000002.old" / "model.safetensors").write_text("weights")
    (tmp_path / "step_000003").mkdir()
    (tmp_path / ".step_000003.old").mkdir()  # killed after the new one was in: the old copy is stale
    removed = clean_temporaries(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000002", "step_000003"]
    assert (tmp_path / "step_000002" / "model.safetensors").read_text() == "weights"
    assert len(removed) == 3


def test_keep_last_prunes_only_checkpoints_older_than_the_new_one(tmp_path):
    from ghoul.checkpoint import save_training_checkpoint
    from ghoul.layout import step_dirs

    model = tiny()
    for step in (1, 2, 10):
        save_training_checkpoint(tmp_path, step, model, [], {"step": step})
    save_training_checkpoint(tmp_path, 3, model, [], {"step": 3}, keep_last=2)  # a run branched at step 2
    assert [p.name for p in step_dirs(tmp_path)] == ["step_000002", "step_000003", "step_000010"]
    assert (tmp_path / "latest").read_text().strip() == "step_000003"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_saved_weights_are_as_readable_as_any_file_the_user_writes(tmp_path):
    """safetensors creates its file 0600: a checkpoint others in the group could not read, unlike its config.json."""
    umask = os.umask(0o022)
    try:
        save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "m")
    finally:
        os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "m").iterdir()}
    assert modes["model.safetensors"] == modes["config.json"] == 0o644, modes


WRITE_AND_HANG = """
import sys, time
from pathlib import Path
from ghoul.files import atomic_directory, atomic_write

def hang(tmp):
    tmp.write_bytes(b"half an export")
    print("writing", flush=True)
    time.sleep(600)

if sys.argv[2] == "file":
    atomic_write(sys.argv[1], hang)
else:
    with atomic_directory(sys.argv[1]) as tmp:
        hang(tmp / "model.safetensors")
"""


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_a_rerun_removes_what_a_killed_writer_left_and_keeps_a_live_ones(tmp_path, kind):
    import subprocess
    import sys

    from ghoul.files import atomic_write_text

    out = tmp_path / ("model.gguf" if kind == "file" else "hf")

    def start() -> subprocess.Popen:
        writer = subprocess.Popen([sys.executable, "-c", WRITE_AND_HANG, str(out), kind], stdout=subprocess.PIPE)
        assert writer.stdout.readline() == b"writing\n"
        return writer

    killed, live = start(), start()
    killed.kill()
    killed.wait()
    try:
        left = sorted(p.name for p in tmp_path.glob(".*.tmp"))
        assert len(left) == 2  # a hidden copy each, as large as the output
        if kind == "file":
            atomic_write_text(out, "exported")
        else:
            with atomic_directory(out) as tmp:
                (tmp / "config.json").write_text("{}")
        kept = sorted(p.name for p in tmp_path.glob(".*.tmp"))
        assert kept == [name for name in left if f"-{live.pid}." in name]  # the killed one's is gone
    finally:
        live.kill()
        live.wait()
    assert out.exists()


def test_an_output_that_cannot_be_written_is_named_not_its_temporary(tmp_path):
    """A read-only folder (as root, only a read-only mount refuses): the error names the path the user gave."""
    import errno

    from ghoul.cli import usage_error
    from ghoul.files import atomic_write_text, create_beside

    def refuse(tmp):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp))

    with pytest.raises(OSError) as raised:
        create_beside(tmp_path / "rankings.jsonl", refuse)
    assert raised.value.filename == str(tmp_path / "rankings.jsonl")
    assert usage_error(raised.value) == f"Read-only file system: {tmp_path / 'rankings.jsonl'}"
    atomic_write_text(tmp_path / "rankings.jsonl", "{}\n")  # the next write goes through
    assert not list(tmp_path.glob(".*.tmp"))
