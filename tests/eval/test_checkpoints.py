"""`ghoul eval checkpoints`: every step_* directory evaluated once, eval.jsonl appended, both curves drawn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ghoul.cli import main
from ghoul.eval.checkpoints import CheckpointsConfig, run
from ghoul.eval.curves import REFERENCES, dataset_of, plot_metric, series
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig

PNG = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4096


def _save_step(run_dir: Path, step: int) -> None:
    torch.manual_seed(step)
    GPT(GPTConfig.from_name("tiny")).save_pretrained(run_dir / f"step_{step:06d}")


@pytest.fixture
def tiny_run(tmp_path: Path) -> Path:
    """A run as the trainer leaves it: three checkpoints, `latest`, and a log with losses and HellaSwag points."""
    run_dir = tmp_path / "run"
    for step in (10, 20, 30):
        _save_step(run_dir, step)
    (run_dir / "latest").write_text("step_000030\n")
    with open(run_dir / "log.jsonl", "w") as f:
        for step in range(0, 31, 2):
            record = {"step": step, "loss": 10.9 - 0.05 * step, "tokens": step * TOKENS_PER_STEP, "lr": 6e-4}
            if step % 10 == 0:
                record.update(val_loss=10.95 - 0.05 * step, hellaswag_acc=0.24 + 0.001 * step)
            f.write(json.dumps(record) + "\n")
    return run_dir


def _config(run_dir: Path, shard_dir: Path, hellaswag: Path) -> CheckpointsConfig:
    return CheckpointsConfig(run_dir, val_loss=True, data=shard_dir, limit=12, data_path=hellaswag, tokens=512,
                             seq_len=64, batch_size=8, reference=["gpt2-124m", "gpt2-xl", "gpt3"], device="cpu")


def test_evaluates_each_checkpoint_once_and_draws_both_curves(tiny_run: Path, shard_dir: Path,
                                                              hellaswag_100: Path) -> None:
    cfg = _config(tiny_run, shard_dir, hellaswag_100)
    first = run(cfg)
    assert [r["step"] for r in first] == [10, 20, 30]
    records = read_jsonl(tiny_run / "eval.jsonl")
    assert records == first
    for r in records:
        assert r["tokens"] == r["step"] * TOKENS_PER_STEP  # taken from the training log
        assert r["hellaswag_n"] == 12 and 0 <= r["hellaswag_acc"] <= 1 and r["val_tokens"] == 512
        assert 9 < r["val_loss"] < 12
    for name in ("val_loss.png", "hellaswag_acc.png"):
        assert (tiny_run / name).read_bytes().startswith(PNG)

    assert run(cfg) == []  # nothing new: nothing re-evaluated
    assert read_jsonl(tiny_run / "eval.jsonl") == records
    _save_step(tiny_run, 40)  # training went on
    assert [r["step"] for r in run(cfg)] == [40]
    assert len(read_jsonl(tiny_run / "eval.jsonl")) == 4


def test_cli_and_bad_input(tiny_run: Path, shard_dir: Path, hellaswag_100: Path, tmp_path: Path,
                           capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "checkpoints", str(tiny_run), "--limit", "4", "--data-path", str(hellaswag_100),
                 "--reference", "gpt2-124m", "gpt3"])
    assert code == 0
    assert "evaluated 3 checkpoint(s)" in capsys.readouterr().out
    assert main(["eval", "checkpoints", str(tiny_run), "--val-loss"]) == 2
    assert "--val-loss needs --data" in capsys.readouterr().err
    assert main(["eval", "checkpoints", str(tmp_path / "nowhere"), "--data-path", str(hellaswag_100)]) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # argparse rejects an unknown choice itself
        main(["eval", "checkpoints", str(tiny_run), "--reference", "gpt5"])
    assert exit_info.value.code == 2


def test_references_and_curves(tmp_path: Path) -> None:
    assert dataset_of("fineweb-edu") == "fineweb-edu" and dataset_of("fineweb") == "fineweb"
    assert dataset_of("creepypasta") is None
    assert REFERENCES["gpt2-124m"].hellaswag == pytest.approx(0.2955)
    log = [{"step": 0, "val_loss": 10.9}, {"step": 5, "val_loss": 6.0, "tokens": 100}, {"step": 5, "val_loss": 5.5}]
    assert series(log, "val_loss") == [(0, None, 10.9), (5, None, 5.5)]  # a later record for a step wins
    drawn = plot_metric(tmp_path / "v.png", "val_loss", {"log": series(log, "val_loss")}, ["gpt2-124m"], "fineweb",
                        "title")
    assert drawn and (tmp_path / "v.png").read_bytes().startswith(PNG)
    assert not plot_metric(tmp_path / "w.png", "val_loss", {"log": []}, ["gpt2-124m"], None, "title")
