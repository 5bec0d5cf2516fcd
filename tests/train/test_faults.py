"""Faults a training run meets: Ctrl-C, kill -9, a full disk, resuming from an earlier checkpoint, a run stopped before
its first checkpoint, and damaged inputs. Nothing may be lost, and a resumed run must train as if never stopped."""

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul import checkpoint
from ghoul.advice import TRAINING_ADVICE, Advice, advice, advising
from ghoul.checkpoint import load_model_dir, load_training_checkpoint
from ghoul.cli import main
from ghoul.data.loader import ShardLoader
from ghoul.data.shards import shard_name, write_shard
from ghoul.dist import DistInfo
from ghoul.errors import GhoulError
from ghoul.layout import newest_checkpoint, step_dirs
from ghoul.train.loop import train
from ghoul.train.stages import run, start_model
from tests.train.conftest import config, log, losses
from tests.train.interrupt_rank import interrupting_next

ROOT = Path(__file__).resolve().parents[2]


def interrupt_at(monkeypatch, batches: set[int]) -> None:
    """Send this process SIGINT (a Ctrl-C) as it reads the given training batches (counted from 1)."""
    monkeypatch.setattr(ShardLoader, "__next__", interrupting_next(batches))


def hidden(run_dir: Path) -> list[str]:
    """Temporaries left in a run directory (atomic writes use hidden names)."""
    return sorted(p.name for p in run_dir.iterdir() if p.name.startswith("."))


def pretrain(shards: Path, out: Path, *args: str) -> list[str]:
    return ["pretrain", "--dataset", str(shards), "--output-dir", str(out), "--model", "tiny", "--batch-size", "4",
            "--seq-len", "64", "--eval-every", "0", "--learning-rate", "3e-3", "--device", "cpu", *args]


def one_line_error(capsys, args: list[str]) -> str:
    """The message of `ghoul ARGS`, which must fail with exit code 2 and one line on stderr."""
    capsys.readouterr()
    code = main(args)
    err = capsys.readouterr().err  # the progress bar's lines come first
    assert code == 2 and "Traceback" not in err and err.strip().splitlines()[-1].startswith("ghoul "), err
    return err.strip().splitlines()[-1]


# ---- resuming from an earlier checkpoint, Ctrl-C, a run with no checkpoint --------------------------------------

def test_resuming_from_an_earlier_checkpoint_starts_a_branch_and_loses_nothing(fineweb_shards, tmp_path):
    out = tmp_path / "r"
    run(config(fineweb_shards, out, max_steps=5, checkpoint_every=1, eval_every=0))
    old_log = (out / "log.jsonl").read_text()
    run(config(fineweb_shards, out, max_steps=4, checkpoint_every=1, eval_every=0, keep_last=2,
               resume=str(out / "step_000002")))
    assert [p.name for p in step_dirs(out)] == ["step_000003", "step_000004"]  # the resumed run's, pruned to 2
    assert (out / "latest").read_text().strip() == "step_000004"
    aside = out / "later_than_step_000002"  # the old run after step 2, whole, where pruning never looks
    assert [p.name for p in step_dirs(aside)] == ["step_000003", "step_000004", "step_000005"]
    assert (aside / "log.jsonl").read_text() == old_log
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4]


def test_a_resumed_run_refuses_model_options_that_ask_for_another_model(fineweb_shards, tmp_path, capsys):
    """A resumed run keeps its model: a model option that contradicts the checkpoint's is a one-line error that
    changes nothing in the run, not an option silently ignored; the run's own options, or none, resume it."""
    out = tmp_path / "r"
    assert main(pretrain(fineweb_shards, out, "--max-steps", "2", "--norm", "rmsnorm")) == 0
    before = (out / "log.jsonl").read_text()
    for args, message in ((["--model", "small"], "--model asks for n_layer 6, but the model resumed from"),
                          (["--norm", "layernorm"], "--norm asks for norm layernorm, but the model resumed from"),
                          (["--no-pad-vocab"], "--pad-vocab asks for vocab_padding 1, but the model resumed from")):
        err = one_line_error(capsys, pretrain(fineweb_shards, out, "--max-steps", "4", "--resume", *args))
        assert message in err and "a resumed run keeps its model" in err, err
    assert (out / "log.jsonl").read_text() == before and [p.name for p in step_dirs(out)] == ["step_000002"]
    assert main(pretrain(fineweb_shards, out, "--max-steps", "3", "--resume", "--norm", "rmsnorm")) == 0
    assert main(pretrain(fineweb_shards, out, "--max-steps", "4", "--resume")) == 0
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4]
    assert load_model_dir(out).config.norm == "rmsnorm"


def test_a_model_directory_is_never_trained_into(fineweb_shards, tmp_path, capsys):
    """--output-dir naming a checkpoint (or an export) would overwrite its config.json: refused, the model intact."""
    out = tmp_path / "r"
    assert main(pretrain(fineweb_shards, out, "--max-steps", "2")) == 0
    model_dir = out / "step_000002"
    config = (model_dir / "config.json").read_text()
    err = one_line_error(capsys, ["finetune", "--dataset", str(fineweb_shards), "--base-model", str(model_dir),
                                  "--output-dir", str(model_dir), "--device", "cpu"])
    assert f"{model_dir} holds a model (model.safetensors: a checkpoint or an export), not a training run" in err
    assert (model_dir / "config.json").read_text() == config and load_model_dir(model_dir).config.n_layer == 2


def test_an_error_in_the_first_evaluation_is_the_last_line(fineweb_shards, tmp_path, capsys):
    """Step 0's evaluation fails before the progress bar is drawn, so the message is not buried under it."""
    err = one_line_error(capsys, pretrain(fineweb_shards, tmp_path / "r", "--hellaswag-every", "1",
                                          "--hellaswag-path", str(tmp_path / "none.jsonl")))
    assert "none.jsonl does not exist: give the path of the official hellaswag_val.jsonl" in err


def test_ctrl_c_stops_at_a_step_boundary_and_resumes_exactly(fineweb_shards, tmp_path, monkeypatch, capsys):
    kw = dict(max_steps=6, total_batch_size=512, eval_every=0)  # 2 micro-batches a step
    run(config(fineweb_shards, tmp_path / "a", **kw))
    interrupt_at(monkeypatch, {7})  # the first micro-batch of step 4
    with pytest.raises(KeyboardInterrupt):
        run(config(fineweb_shards, tmp_path / "b", **kw))
    assert "interrupted after step 4" in capsys.readouterr().out
    assert [p.name for p in step_dirs(tmp_path / "b")] == ["step_000004"]
    state = load_training_checkpoint(tmp_path / "b")[0]
    assert state["step"] == 4 and state["loader"]["position"] == 4 * 512  # the data position of the weights
    monkeypatch.undo()
    run(config(fineweb_shards, tmp_path / "b", resume="latest", **kw))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")  # bit for bit
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler was put back


def test_a_second_ctrl_c_stops_at_once_and_saves_nothing(fineweb_shards, tmp_path, monkeypatch, capsys):
    interrupt_at(monkeypatch, {5, 6})  # both micro-batches of step 3
    with pytest.raises(KeyboardInterrupt):
        run(config(fineweb_shards, tmp_path / "r", max_steps=6, total_batch_size=512, eval_every=0,
                   checkpoint_every=2))
    assert "stopped at once, saving nothing: the newest checkpoint is" in capsys.readouterr().out
    assert [p.name for p in step_dirs(tmp_path / "r")] == ["step_000002"]
    assert load_training_checkpoint(tmp_path / "r")[0]["loader"]["position"] == 2 * 512


def test_ctrl_c_on_one_torchrun_rank_stops_every_rank_after_the_same_step(fineweb_shards, tmp_path):
    out = tmp_path / "r"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "tests.train.interrupt_rank", "3",
                           *pretrain(fineweb_shards, out, "--max-steps", "8", "--batch-size", "2")],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                          timeout=300)
    assert done.returncode != 0 and "interrupted after step 3" in done.stdout, done.stderr[-3000:]
    # rank 0 never got the signal, yet saved at the step rank 1 stopped at, with the data position of both
    assert [p.name for p in step_dirs(out)] == ["step_000003"]
    assert load_training_checkpoint(out)[0]["loader"]["position"] == 3 * 2 * 64 * 2
    assert [r["step"] for r in log(out)] == [1, 2, 3]


def test_a_run_stopped_before_its_first_checkpoint_starts_over_with_resume(fineweb_shards, tmp_path, capsys):
    out = tmp_path / "r"
    calls = []

    def nan_at_step_2(m, x, y):
        calls.append(1)
        return m(x, y)[1] * (float("nan") if len(calls) == 2 else 1.0)

    cfg = config(fineweb_shards, out, max_steps=4, eval_every=0)
    model, tokenizer = start_model(cfg, None)
    with pytest.raises(GhoulError, match="no checkpoint was written yet: .* start the run over with --resume"):
        train(cfg, model, tokenizer, DistInfo(), loss_fn=nan_at_step_2)
    err = one_line_error(capsys, pretrain(fineweb_shards, out, "--max-steps", "4"))
    assert "stopped before its first checkpoint: pass --resume to start it over" in err
    assert main(pretrain(fineweb_shards, out, "--max-steps", "4", "--resume")) == 0
    assert [r["step"] for r in log(out)] == [1, 2, 3, 4]  # started over: each step once
    assert one_line_error(capsys, pretrain(fineweb_shards, tmp_path / "none", "--resume"))


def test_a_non_finite_loss_gives_the_advice_of_the_outermost_command(fineweb_shards, tmp_path):
    """A stage run by another command (the pipeline's rlhf, say) advises in the words of the command that was typed."""
    outer, inner = Advice(retune="outer: retune", restart="outer: restart"), Advice(restart="inner: restart")
    cfg = config(fineweb_shards, tmp_path / "r", max_steps=4, eval_every=0)
    model, tokenizer = start_model(cfg, None)
    with advising(outer), advising(inner):
        with pytest.raises(GhoulError, match="the loss became nan at step 1; no checkpoint was written yet: outer: "
                                             "restart"):
            train(cfg, model, tokenizer, DistInfo(), loss_fn=lambda m, x, y: m(x, y)[1] * float("nan"))
    assert advice() is TRAINING_ADVICE


def test_stale_temporaries_of_a_killed_run_are_removed_at_its_next_start(fineweb_shards, tmp_path):
    out = tmp_path / "r"
    run(config(fineweb_shards, out, max_steps=2, checkpoint_every=1, eval_every=0))
    (out / ".step_000003.1a2b3c4d.tmp").mkdir()  # a checkpoint being written when the kill came
    (out / ".step_000003.1a2b3c4d.tmp" / "optimizer.pt").write_bytes(bytes(1000))
    (out / ".latest.5e6f7a8b.tmp").write_text("step_0000")
    run(config(fineweb_shards, out, max_steps=3, checkpoint_every=1, eval_every=0, resume="latest"))
    assert hidden(out) == [] and [p.name for p in step_dirs(out)] == ["step_000001", "step_000002", "step_000003"]


# ---- damaged inputs: one-line errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("edit, message", [
    ({"shards": "x"}, '"shards" is "x", not an object of token counts'),
    ({"vocab_size": "lots"}, '"vocab_size" is "lots", not a positive token count'),
])
def test_a_damaged_meta_json_is_a_one_line_error(fineweb_shards, tmp_path, capsys, edit, message):
    data = tmp_path / "data"
    shutil.copytree(fineweb_shards, data)
    meta = json.loads((data / "meta.json").read_text())
    (data / "meta.json").write_text(json.dumps({**meta, **edit}))
    assert message in one_line_error(capsys, pretrain(data, tmp_path / "r", "--max-steps", "1"))


def test_token_ids_beyond_the_models_vocabulary_are_a_one_line_error(tmp_path, capsys):
    (tmp_path / "data").mkdir()
    write_shard(tmp_path / "data" / shard_name("train", 0), np.full(2000, 60_000, dtype=np.uint16))  # llm.c style
    err = one_line_error(capsys, pretrain(tmp_path / "data", tmp_path / "r", "--max-steps", "1"))
    assert "holds token id 60000, outside the model's vocabulary of 50,257" in err


@pytest.mark.parametrize("damage", [
    lambda s: (s / "optimizer.pt").write_bytes(b""),
    lambda s: (s / "optimizer.pt").write_bytes((s / "optimizer.pt").read_bytes()[:3000]),
    lambda s: torch.save([1, 2], s / "optimizer.pt"),
    lambda s: edit_state(s, lambda st: st.pop("loader")),
    lambda s: edit_state(s, lambda st: st.update(step="2")),
    lambda s: edit_state(s, lambda st: st.update(rng={})),
    lambda s: edit_state(s, lambda st: st["loader"].update(position="x")),
    lambda s: edit_state(s, lambda st: st.update(tokens=[1])),
], ids=["empty-optimizer", "truncated-optimizer", "other-object", "no-loader", "step-text", "no-rng", "position",
        "tokens"])
def test_a_damaged_checkpoint_is_a_one_line_error(fineweb_shards, tmp_path, capsys, damage):
    out = tmp_path / "r"
    run(config(fineweb_shards, out, max_steps=2, eval_every=0))
    damage(out / "step_000002")
    err = one_line_error(capsys, pretrain(fineweb_shards, out, "--max-steps", "3", "--resume"))
    assert "step_000002 is damaged" in err and "resume from an earlier checkpoint" in err


def edit_state(step: Path, change) -> None:
    state = json.loads((step / "trainer_state.json").read_text())
    change(state)
    (step / "trainer_state.json").write_text(json.dumps(state))


# ---- a full disk ------------------------------------------------------------------------------------------------

def assert_disk_full_left_the_run_intact(out: Path, err: str, kept: list[str]) -> None:
    assert "no space left on the device" in err and "continue with --resume" in err, err
    assert [p.name for p in step_dirs(out)] == kept and (out / "latest").read_text().strip() == kept[-1]
    assert hidden(out) == []  # no half-written checkpoint
    for step in kept:
        load_training_checkpoint(out / step)
        load_model_dir(out / step)


def test_a_full_disk_while_checkpointing_is_a_one_line_error(fineweb_shards, tmp_path, capsys, monkeypatch):
    saves, save = [], torch.save

    def full_on_the_third(obj, f):
        saves.append(1)
        if len(saves) == 3:
            f.write(b"\0" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        save(obj, f)

    monkeypatch.setattr(checkpoint.torch, "save", full_on_the_third)
    out = tmp_path / "r"
    err = one_line_error(capsys, pretrain(fineweb_shards, out, "--max-steps", "4", "--checkpoint-every", "1"))
    assert_disk_full_left_the_run_intact(out, err, ["step_000001", "step_000002"])
    monkeypatch.undo()  # space was freed
    assert main(pretrain(fineweb_shards, out, "--max-steps", "4", "--checkpoint-every", "1", "--resume")) == 0


@pytest.fixture
def small_filesystem(tmp_path):
    """A 24 MiB tmpfs: two checkpoints of the tiny model (9.4 MB each) fit, a third does not."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root; the fault-injecting test covers the same path")
    path = tmp_path / "small"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_full_disk_through_a_real_small_filesystem(fineweb_shards, small_filesystem, capsys):
    out = small_filesystem / "r"
    err = one_line_error(capsys, pretrain(fineweb_shards, out, "--max-steps", "5", "--checkpoint-every", "1"))
    assert_disk_full_left_the_run_intact(out, err, ["step_000001", "step_000002"])


# ---- kill -9 and Ctrl-C at random moments, as a user would ------------------------------------------------------

def start(shards: Path, out: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "ghoul", *pretrain(shards, out, *args)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait(proc: subprocess.Popen, out: Path | None = None, steps: int = 0) -> int:
    """The exit code of a run stopped by SIGKILL or Ctrl-C (130), or of one that ran to its end. A Ctrl-C that lands
    after the command has returned, in the interpreter's shutdown, ends the process by the signal itself (-2):
    accepted only once the run in `out` has all its `steps`."""
    _, err = proc.communicate(timeout=120)
    finished = out is not None and newest_step(out) == steps
    accepted = (0, 130, -signal.SIGKILL, *([-signal.SIGINT] if finished else []))
    assert proc.returncode in accepted, err.decode()[-2000:]
    return proc.returncode


def assert_no_broken_checkpoint(out: Path) -> None:
    for step in step_dirs(out):
        load_training_checkpoint(step)
        load_model_dir(step)
    if (out / "latest").exists():
        assert (out / (out / "latest").read_text().strip()).is_dir()


def test_kill_9_and_ctrl_c_at_random_moments_lose_nothing(fineweb_shards, tmp_path):
    steps = 12
    args = ("--max-steps", str(steps), "--checkpoint-every", "1", "--keep-last", "3")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the runs below: the reference is computed in this process, bit for bit alike
    try:
        assert main(pretrain(fineweb_shards, tmp_path / "ref", *args)) == 0
    finally:
        torch.set_num_threads(threads)
    step_time = log(tmp_path / "ref")[-1]["elapsed"] / steps  # with its checkpoint; set-up left out
    for seed, stops in [(1, [signal.SIGKILL, signal.SIGKILL]), (2, [signal.SIGINT])]:
        rng, out = random.Random(seed), tmp_path / f"run{seed}"
        for attempt, sig in enumerate([*stops, None]):  # the last start runs to the end
            before = log_time(out)
            proc = start(fineweb_shards, out, *args, *(["--resume"] if attempt else []))
            if sig is not None:
                while proc.poll() is None and log_time(out) == before:  # until it is set up and training
                    time.sleep(0.02)
                time.sleep(rng.uniform(0, 0.8) * step_time * (steps - newest_step(out)))  # before the run ends
                proc.send_signal(sig)
            wait(proc, out, steps)
            assert_no_broken_checkpoint(out)
            if newest_step(out) == steps:
                break
        assert newest_step(out) == steps, f"seed {seed}: the run did not finish"
        if sig is None:  # it started after the kills: what they left half-written was removed
            assert hidden(out) == []
        assert losses(out) == losses(tmp_path / "ref")


def newest_step(out: Path) -> int:
    newest = newest_checkpoint(out)
    return int(newest.name[5:]) if newest else 0


def log_time(out: Path) -> int | None:
    """When the run's log was last written (a resumed run rewrites it once set up)."""
    path = out / "log.jsonl"
    return path.stat().st_mtime_ns if path.exists() else None


def test_a_checkpoint_of_another_kind_of_run_is_named_for_what_it_is(fineweb_shards, tmp_path, capsys):
    """Not 'damaged (trainer_state.json has no loader)' nor 'other optimizer settings': who saved it."""
    run(config(fineweb_shards, tmp_path / "pre", max_steps=2, eval_every=0))
    pre = tmp_path / "pre" / "step_000002"
    grpo = ["grpo", "--policy", str(pre), "--judge", "length", "--prompts-per-step", "1", "--group-size", "2",
            "--max-new-tokens", "4", "--max-steps", "1", "--device", "cpu"]
    assert main([*grpo, "--output-dir", str(tmp_path / "rl")]) == 0
    capsys.readouterr()
    assert main([*grpo, "--output-dir", str(tmp_path / "rl2"), "--max-steps", "3", "--resume", str(pre)]) == 2
    assert "was saved by a trainer on data (pretrain, finetune, dpo, reward train), not by `ghoul grpo`" in \
        capsys.readouterr().err
    assert main(["pretrain", "--dataset", str(fineweb_shards), "--model", "tiny", "--batch-size", "4", "--seq-len",
                 "64", "--max-steps", "4", "--device", "cpu", "--output-dir", str(tmp_path / "pre2"), "--resume",
                 str(tmp_path / "rl" / "step_000001")]) == 2
    assert "was saved by `ghoul grpo`: continue it with that command" in capsys.readouterr().err
