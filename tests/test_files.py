"""One writer per directory: a ghoul process that would write into a directory another is writing is refused, and a
killed writer leaves no lock behind."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.errors import GhoulError
from ghoul.files import sole_writer
from ghoul.model import GPT, GPTConfig
from tests.conftest import REPO

HOLD = """import sys, time
from ghoul.files import sole_writer
with sole_writer(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


@contextlib.contextmanager
def held_elsewhere(directory: Path) -> Iterator[subprocess.Popen]:
    """`directory` held by another process (as a running ghoul command holds its run) until it is killed."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        yield holder
    finally:
        holder.kill()
        holder.wait()


def test_a_directory_being_written_is_refused_to_every_other_writer(data, tmp_path, capsys):
    torch.set_num_threads(1)
    prepare = ["prepare", "text", "--source-path", str(data / "tinyshakespeare" / "input.txt"), "--workers", "1",
               "--no-progress", "--out"]
    assert main([*prepare, str(tmp_path / "shards")]) == 0
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), tmp_path / "model")
    run = tmp_path / "run"
    commands = {
        "prepare": [*prepare, str(run)],
        "pretrain": ["pretrain", "--model", "tiny", "--dataset", str(tmp_path / "shards"), "--max-steps", "2",
                     "--batch-size", "2", "--seq-len", "32", "--device", "cpu", "--output-dir", str(run)],
        "rlhf": ["rlhf", "--config", str(REPO / "configs" / "tiny-rlhf.toml"), "--judge", "length", "--base-model",
                 str(tmp_path / "model"), "--output-dir", str(run)],
        "pipeline": ["pipeline", "--data-dir", str(data), "--device", "cpu", "--output-dir", str(run)],
    }
    with held_elsewhere(run) as holder:
        for name, args in commands.items():
            capsys.readouterr()
            assert main(args) == 2, name
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and f"{run} is being written by another ghoul process: let it finish" in err[0], name
            assert list(run.iterdir()) == [], name  # nothing written, nothing removed
        holder.kill()  # kill -9: the lock goes with the process
        holder.wait()
        assert main(commands["prepare"]) == 0


def test_a_process_may_hold_a_directory_again_and_lets_it_go(tmp_path):
    with sole_writer(tmp_path / "run"), sole_writer(tmp_path / "run"):  # a stage inside a pipeline's hold
        (tmp_path / "run" / "log.jsonl").write_text("")
    with held_elsewhere(tmp_path / "run"):  # released: another process takes it
        pass


def test_under_torchrun_rank_0_holds_the_directory_for_every_rank(tmp_path, monkeypatch):
    """Every rank runs the same command into the same directory (the learning stage prepares its text on each):
    only rank 0 takes the lock, so no rank is refused by another."""
    with held_elsewhere(tmp_path / "run"):  # rank 0, as another process
        monkeypatch.setenv("RANK", "1")
        with sole_writer(tmp_path / "run"):
            (tmp_path / "run" / "tokenizer.json").write_text("{}")
        monkeypatch.setenv("RANK", "0")
        with pytest.raises(GhoulError, match="being written by another ghoul process"), sole_writer(tmp_path / "run"):
            pass


def test_a_refused_run_leaves_what_was_there_as_it_was(data, tmp_path, capsys):
    with pytest.raises(ValueError), sole_writer(tmp_path / "new" / "run"):
        raise ValueError
    assert not (tmp_path / "new" / "run").exists()
    assert main(["pretrain", "--model", "tiny", "--dataset", str(tmp_path), "--output-dir", str(tmp_path / "nothing"),
                 "--resume"]) == 2
    assert "nothing to resume" in capsys.readouterr().err and not (tmp_path / "nothing").exists()
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["prepare", "text", "--source-path", str(data / "tinyshakespeare" / "input.txt"), "--out",
                 str(tmp_path / "notes.txt"), "--workers", "1"]) == 2
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
