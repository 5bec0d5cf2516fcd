"""Validation loss on token shards: the windows, agreement with a plain per-window computation, bits per byte, the
CLI, errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul.checkpoint import load_model_and_tokenizer as load_checkpoint
from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.data.shards import check_data_tokenizer
from ghoul.errors import GhoulError
from ghoul.eval.loss import bits_per_byte, evaluate_loss, read_split, target_bytes, windows
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import load_tokenizer
from ghoul.tokenizer.bpe import BPETokenizer


def test_windows_do_not_overlap_and_respect_the_token_budget() -> None:
    shards = [np.arange(100), np.arange(30)]
    spans = windows(shards, seq_len=10, max_tokens=None)
    assert spans == [(0, o) for o in range(0, 90, 10)] + [(1, 0), (1, 10)]  # each window needs seq_len + 1 tokens
    assert len(windows(shards, seq_len=10, max_tokens=35)) == 3


def test_bits_per_byte_of_a_known_loss() -> None:
    # 2 ln 2 nats per token is 2 bits per token; at 4 bytes per token that is half a bit per byte
    assert bits_per_byte(2 * math.log(2), 4.0) == pytest.approx(0.5)
    assert bits_per_byte(math.log(50257), 1.0) == pytest.approx(math.log2(50257))
    lengths = np.array([1, 3, 0])  # a byte, a 3-byte character, a special token
    assert target_bytes(lengths, np.array([[0, 1], [2, 1]])) == 7 == target_bytes(lengths, torch.tensor([0, 1, 2, 1]))


def test_loss_matches_a_plain_computation(tiny_gpt2: Path, shard_dir: Path) -> None:
    model, tokenizer = load_checkpoint(tiny_gpt2, "cpu")
    shards = read_split(shard_dir, "val")
    result = evaluate_loss(model, shards, "cpu", seq_len=32, batch_size=3, max_tokens=32 * 10, tokenizer=tokenizer)
    assert result["tokens"] == 320
    # the targets are tokens 1..320 of the shard, English text (no <|endoftext|>): their decoded bytes per token
    n_bytes = len(tokenizer.decode(shards[0][1:321]).encode("utf-8"))
    assert result["bytes_per_token"] == pytest.approx(n_bytes / 320)
    assert result["bpb"] == pytest.approx(result["loss"] / math.log(2) / (n_bytes / 320))
    assert "bpb" not in evaluate_loss(model, shards, "cpu", seq_len=32, max_tokens=64)  # no tokenizer, no bytes
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
    assert re.search(r"\d\.\d{4} bits per byte \(\d\.\d\d bytes per token\)", out)


def test_cli_errors_exit_2(tiny_gpt2: Path, char_model: Path, shard_dir: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("not shards")
    for model in (tiny_gpt2, char_model):  # the data is named for what it is, not as GPT-2 shards of another model
        for data, message in [(tmp_path / "none", "shard directory {} does not exist: make one with `ghoul prepare`"),
                              (tmp_path / "notes.txt", "shard directory {} is a file: make one with `ghoul prepare`"),
                              (tiny_gpt2, "{} holds no token shards")]:
            assert main(["eval", "loss", "--checkpoint", str(model), "--data", str(data)]) == 2
            assert message.format(data) in capsys.readouterr().err
    assert main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(shard_dir), "--seq-len", "999"]) == 2
    assert "exceeds the model's block size" in capsys.readouterr().err
    # a budget below one window: the budget is named, not the data (which holds plenty)
    assert main(["eval", "loss", "--checkpoint", str(tiny_gpt2), "--data", str(shard_dir), "--seq-len", "64",
                 "--tokens", "10"]) == 2
    assert "10 tokens to score are fewer than one window of 64: score at least 64" in capsys.readouterr().err


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


def test_data_of_another_bpe_of_the_same_size_is_refused(data: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    # two BPEs of 300 tokens, trained on other text: the same ids name other tokens
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:100_000]
    ours, other = BPETokenizer.train([text[:50_000]], 300), BPETokenizer.train([text[50_000:]], 300)
    assert ours.vocab_size == other.vocab_size and ours.encode(text[:200]) != other.encode(text[:200])
    (tmp_path / "text.txt").write_text(text, encoding="utf-8")
    ours.save(tmp_path / "ours.json")
    assert main(["prepare", "text", "--source-path", str(tmp_path / "text.txt"), "--tokenizer",
                 str(tmp_path / "ours.json"), "--val-tokens", "2000", "--out", str(tmp_path / "shards"),
                 "--no-progress"]) == 0
    check_data_tokenizer(tmp_path / "shards", load_tokenizer(tmp_path / "ours.json"), "ours")  # its own: accepted
    model = tmp_path / "model"
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny", vocab_size=other.vocab_size)), model, other)
    capsys.readouterr()
    message = (f"{tmp_path / 'shards'} was tokenized with bpe (300 tokens) but {model} uses bpe (300), another of "
               "that size: prepare the data with the model's tokenizer (--tokenizer)")
    # without the check, the loss was a plausible figure, and the fine-tune trained on text it misread
    for args in (["eval", "loss", "--checkpoint", str(model), "--tokens", "256", "--seq-len", "32", "--data"],
                 ["finetune", "--base-model", str(model), "--output-dir", str(tmp_path / "ft"), "--max-steps", "2",
                  "--warmdown-iters", "1", "--dataset"]):
        assert main([*args, str(tmp_path / "shards")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(message), err
    assert not (tmp_path / "ft").exists()
