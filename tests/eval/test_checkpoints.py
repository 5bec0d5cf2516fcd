"""`ghoul eval checkpoints`: every step_* directory evaluated once, eval.jsonl appended, both curves drawn."""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.cli import main
from ghoul.eval import checkpoints, curves
from ghoul.eval.checkpoints import CheckpointsConfig, _todo, _Work, run
from ghoul.eval.curves import REFERENCES, dataset_of, plot_metric, series
from ghoul.eval.loss import read_split
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig
from tests.eval.conftest import write_llmc_shard

PNG = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 4096


def _save_step(run_dir: Path, step: int) -> None:
    torch.manual_seed(step)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), run_dir / f"step_{step:06d}")


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
        assert r["val_bpb"] == pytest.approx(r["val_loss"] / math.log(2) / r["val_bytes_per_token"])
        assert 3 < r["val_bytes_per_token"] < 5  # English in GPT-2 tokens: about 4 bytes each
    for name in ("val_loss.png", "val_bpb.png", "hellaswag_acc.png"):
        assert (tiny_run / name).read_bytes().startswith(PNG)

    assert run(cfg) == []  # nothing new: nothing re-evaluated
    assert read_jsonl(tiny_run / "eval.jsonl") == records
    _save_step(tiny_run, 40)  # training went on
    path = tiny_run / "eval.jsonl"
    whole = path.read_bytes()
    path.write_bytes(whole + json.dumps({"checkpoint": "step_000040", "step": 40}).encode()[:30])  # a crash mid-line
    assert [r["step"] for r in run(cfg)] == [40]  # the torn line cut, the record written on a line of its own
    assert path.read_bytes().startswith(whole) and len(read_jsonl(path)) == 4


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


def _other_data(shard_dir: Path, tmp_path: Path) -> Path:
    """Another GPT-2 shard directory: the same meta.json, the val tokens reversed (other text, other losses)."""
    other = tmp_path / "other_shards"
    shutil.copytree(shard_dir, other)
    tokens = read_split(shard_dir, "val")[0]
    write_llmc_shard(other / "val_000000.bin", [int(t) for t in tokens[::-1]])
    return other


def test_a_cached_val_loss_is_reused_only_for_the_same_settings(tmp_path: Path, shard_dir: Path) -> None:
    run_dir = tmp_path / "run"
    _save_step(run_dir, 10)
    cfg = CheckpointsConfig(run_dir, hellaswag=False, val_loss=True, data=shard_dir, tokens=256, seq_len=32,
                            device="cpu", plot=False)
    first = run(cfg)[0]
    assert run(cfg) == []  # unchanged settings: the cached result stands
    assert run(replace(cfg, data=Path(os.path.relpath(shard_dir)))) == []  # the same directory, named otherwise

    other = run(replace(cfg, data=_other_data(shard_dir, tmp_path)))  # another dataset: recomputed, not reprinted
    assert len(other) == 1 and other[0]["val_loss"] != pytest.approx(first["val_loss"])
    assert other[0]["val_loss_key"]["data"] == str((tmp_path / "other_shards").resolve())
    assert run(replace(cfg, tokens=128))[0]["val_tokens"] == 128
    assert run(replace(cfg, tokens=128, seq_len=16))[0]["val_loss_key"]["seq_len"] == 16
    again = run(cfg)  # back to the first settings: their own numbers again
    assert again[0]["val_loss"] == pytest.approx(first["val_loss"]) and again[0]["val_tokens"] == 256


def test_a_cached_hellaswag_score_is_reused_only_for_the_same_file_and_count(tmp_path: Path,
                                                                             hellaswag_100: Path) -> None:
    run_dir = tmp_path / "run"
    _save_step(run_dir, 10)
    cfg = CheckpointsConfig(run_dir, limit=2, data_path=hellaswag_100, batch_size=8, device="cpu", plot=False)
    assert len(run(cfg)) == 1 and run(cfg) == []
    copy = tmp_path / "other_hellaswag.jsonl"  # the same number of examples, from another file
    copy.write_text("".join(hellaswag_100.read_text(encoding="utf-8").splitlines(keepends=True)[50:52]),
                    encoding="utf-8")
    assert run(replace(cfg, data_path=copy))[0]["hellaswag_key"] == {"file": str(copy.resolve()), "n": 2,
                                                                      "dtype": "float32"}
    assert run(replace(cfg, data_path=copy)) == []
    assert run(replace(cfg, data_path=copy, limit=5)) == []  # a limit past the end of the file: the same 2 examples
    assert len(run(replace(cfg, data_path=copy, limit=1))) == 1


def test_records_without_a_key_are_recomputed(tmp_path: Path, shard_dir: Path) -> None:
    """eval.jsonl as older versions wrote it: metrics, no record of the settings they came from."""
    run_dir = tmp_path / "run"
    _save_step(run_dir, 10)
    old = {"checkpoint": "step_000010", "step": 10, "tokens": None, "val_loss": 1.5, "val_tokens": 256}
    (run_dir / "eval.jsonl").write_text(json.dumps(old) + "\n", encoding="utf-8")
    cfg = CheckpointsConfig(run_dir, hellaswag=False, val_loss=True, data=shard_dir, tokens=256, seq_len=32,
                            device="cpu", plot=False)
    new = run(cfg)
    assert len(new) == 1 and new[0]["val_loss"] > 9  # a random model, not the recorded 1.5
    assert read_jsonl(run_dir / "eval.jsonl") == [old] + new  # the old line is kept, the new one follows it
    assert run(cfg) == []


def test_a_val_loss_without_bits_per_byte_is_recomputed() -> None:
    work = _Work(None, [], None, None, {"data": "d"})
    assert _todo({"val_loss_key": {"data": "d"}, "val_loss": 1.5}, work) == ["val_loss"]  # as written before bpb
    assert _todo({"val_loss_key": {"data": "d"}, "val_loss": 1.5, "val_bpb": 0.5}, work) == []


def test_val_loss_on_data_of_another_tokenizer_is_refused(tiny_run: Path, char_shard_dir: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    code = main(["eval", "checkpoints", str(tiny_run), "--no-hellaswag", "--val-loss", "--data", str(char_shard_dir),
                 "--tokens", "256", "--seq-len", "32"])
    assert code == 2 and "was tokenized with char" in capsys.readouterr().err
    assert not (tiny_run / "eval.jsonl").exists()



def test_a_token_budget_below_one_window_is_refused_before_hellaswag_is_scored(
        tiny_run: Path, shard_dir: Path, hellaswag_100: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    (run / "eval.jsonl").unlink(missing_ok=True)
    def scored(*args, **kwargs):
        raise AssertionError("HellaSwag was scored before the token budget was checked")

    monkeypatch.setattr(checkpoints, "evaluate_hellaswag", scored)
    code = main(["eval", "checkpoints", str(run), "--data-path", str(hellaswag_100), "--limit", "4", "--val-loss",
                 "--data", str(shard_dir), "--tokens", "10", "--seq-len", "32"])
    assert code == 2 and "10 tokens to score are fewer than one window of 32" in capsys.readouterr().err
    assert not (run / "eval.jsonl").exists()

def test_a_directory_without_checkpoints_is_an_error(tmp_path: Path, hellaswag_100: Path,
                                                    capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    (empty / ".step_000010").mkdir(parents=True)  # a half-written checkpoint does not count
    assert main(["eval", "checkpoints", str(empty), "--data-path", str(hellaswag_100), "--limit", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(empty) in err and "step_*" in err
    assert not (empty / "eval.jsonl").exists()


def test_what_holds_no_checkpoints_is_answered_with_what_it_holds(tiny_run: Path, shard_dir: Path,
                                                                  hellaswag_100: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    # the runs inside a pipeline's directory, not a made-up stage beside shards or inside a checkpoint
    pipeline = tiny_run.parent / "pipeline"
    pipeline.mkdir()
    shutil.move(tiny_run, pipeline / "pretrain")
    args = ["--hellaswag", "--data-path", str(hellaswag_100), "--limit", "2"]
    for directory, end in [
        (pipeline, f"(--checkpoint-every); give one of the runs in it: {pipeline / 'pretrain'}"),
        (shard_dir, "as a training run saves them (--checkpoint-every)"),
        (pipeline / "pretrain" / "step_000010", "is one model, not a run of checkpoints: give the run directory that "
                                                "holds its step_* directories (ghoul eval loss and eval hellaswag "
                                                "score one model)")]:
        assert main(["eval", "checkpoints", str(directory), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].endswith(end), err


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


def test_the_step_axis_of_a_short_run_has_whole_steps(tmp_path: Path, monkeypatch) -> None:
    # a 4-step run's axis was ticked at 0.5, which the SI-prefix labels print as "500m"
    figures = []
    monkeypatch.setattr(curves.Figure, "savefig", lambda fig, *args, **kwargs: figures.append(fig))
    points = [(2, None, 6.0), (4, None, 5.5)]
    assert plot_metric(tmp_path / "v.png", "val_loss", {"log": points}, [], None, "title")
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    labels = [t.get_text() for t in ax.get_xticklabels() if t.get_text()]
    assert labels and all(float(x).is_integer() for x in ax.get_xticks()), labels
    assert not any(label.endswith("m") for label in labels), labels


def test_a_loss_curve_names_the_held_out_tokens_behind_it(tmp_path: Path, monkeypatch) -> None:
    # the training log's validation reads its first --eval-iters batches, an evaluation the whole split: the labels
    # say so, or the two curves would seem to disagree
    drawn = {}
    monkeypatch.setattr(curves, "plot_metric", lambda path, metric, c, *rest: drawn.setdefault(metric, c) or True)
    log = [{"step": 10, "val_loss": 5.0, "val_bpb": 2.1, "val_tokens": 512}]
    evals = [{"step": 10, "val_loss": 5.2, "val_bpb": 2.2, "val_tokens": 8192, "hellaswag_acc": 0.3}]
    curves.plot_run(tmp_path, evals, log, [])
    assert drawn["val_bpb"] == {"checkpoints (ghoul eval), 8,192 tokens": [(10, None, 2.2)],
                                "training log, 512 tokens": [(10, None, 2.1)]}
    assert list(drawn["hellaswag_acc"]) == ["checkpoints (ghoul eval)", "training log"]
    drawn.clear()
    curves.plot_run(tmp_path, evals, [{"step": 10, "val_loss": 5.0}], [])  # a log from before val_tokens
    assert list(drawn["val_loss"]) == ["checkpoints (ghoul eval), 8,192 tokens", "training log"]
