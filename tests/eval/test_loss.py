"""Validation loss on token shards: the windows, agreement with a plain per-window computation, the CLI, errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul.checkpoint import load_model_and_tokenizer as load_checkpoint
from ghoul.cli import main
from ghoul.data.shards import check_data_tokenizer
from ghoul.errors import GhoulError
from ghoul.eval.loss import evaluate_loss, read_split, windows


def test_windows_do_not_overlap_and_respect_the_token_budget() -> None:
    shards = [np.arange(100), np.arange(30)]
    spans = windows(shards, seq_len=10, max_tokens=None)
    assert spans == [(0, o) for o in range(0, 90, 10)] + [(1, 0), (1, 10)]  # each window needs seq_len + 1 tokens
    assert len(windows(shards, seq_len=10, max_tokens=35)) == 3


def test_loss_matches_a_plain_computation(tiny_gpt2: Path, shard_dir: Path) -> None:
    model, _ = load_checkpoint(tiny_gpt2, "cpu")
    shards = read_split(shard_dir, "val")
    result = evaluate_loss(model, shards, "cpu", seq_len=32, batch_size=3, max_tokens=32 * 10)
    assert result["tokens"] == 320
    val = torch.from_numpy(np.asarray(shards[0][:32 * 10 + 1], dtype=np.int64))
    with torch.no_grad():
        losses = [model(val[i:i + 32][None], val[i + 1:i + 33][None])[1].item() for i in range(0, 320, 32)]
    assert result["loss"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)
    assert abs(result["loss"] - math.log(50257)) < 1.0  # a random model is about uniform over the vocabulary


def test_cli_prints_the_loss(tiny_gpt2: Path, shard_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(shard_dir), "--tokens", "1000",
                 "--seq-len", "64", "--batch-size", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "val loss" in out and "960 tokens" in out  # 15 whole windows of 64


def test_cli_errors_exit_2(tiny_gpt2: Path, shard_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(tmp_path / "none")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(shard_dir), "--seq-len", "999"]) == 2
    assert "exceeds the model's block size" in capsys.readouterr().err


def test_data_of_another_tokenizer_is_refused(tiny_gpt2: Path, shard_dir: Path, char_shard_dir: Path,
                                              capsys: pytest.CaptureFixture) -> None:
    _, gpt2 = load_checkpoint(tiny_gpt2, "cpu")
    check_data_tokenizer(shard_dir, gpt2, tiny_gpt2)  # the same tokenizer: no complaint
    with pytest.raises(GhoulError, match="was tokenized with char"):
        check_data_tokenizer(char_shard_dir, gpt2, tiny_gpt2)
    # every char id is a valid GPT-2 id, so without the check this printed a plausible loss and exited 0
    code = main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(char_shard_dir), "--tokens", "256",
                 "--seq-len", "32"])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and str(char_shard_dir) in err and "the model's tokenizer" in err
