"""PPO and GRPO: the clipped loss, the KL estimate and the group advantages by hand, rollout masks, and a toy task
whose optimal policy is known (the reward is the share of token 3 in the completion) on which both raise the reward
while the KL to the reference stays bounded."""

from __future__ import annotations

import math
import os
import signal
from collections.abc import Callable

import pytest
import torch

from ghoul.checkpoint import load_model_dir
from ghoul.cli import main
from ghoul.config import build
from ghoul.errors import GhoulError
from ghoul.feedback import ppo
from ghoul.feedback.ppo import (
    PpoConfig,
    RlConfig,
    clipped_policy_loss,
    group_advantages,
    kl_k3,
    rl_train,
    rollout,
    run_grpo,
    run_ppo,
    whiten,
)
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig

TOKEN, NEW = 3, 12


def test_clipped_policy_loss_by_hand():
    old = torch.zeros(1, 4)
    logps = torch.log(torch.tensor([[1.5, 0.5, 1.1, 2.0]]))  # ratios 1.5, 0.5, 1.1, 2.0
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)  # the last token is padding
    loss, clip = clipped_policy_loss(logps, old, adv, mask, 0.2)
    # min(r A, clip(r) A): min(1.5, 1.2) = 1.2; min(0.5, 0.8) = 0.5; min(-1.1, -1.1) = -1.1
    assert loss.item() == pytest.approx(-(1.2 + 0.5 - 1.1) / 3)
    assert clip.item() == pytest.approx(2 / 3)  # 1.5 and 0.5 lie outside [0.8, 1.2]


def test_kl_estimate_and_advantages_by_hand():
    logps, ref = torch.tensor([math.log(0.5), math.log(0.2)]), torch.tensor([math.log(0.25), math.log(0.2)])
    assert kl_k3(logps, ref).tolist() == pytest.approx([0.5 - math.log(0.5) - 1, 0.0])
    rewards, groups = torch.tensor([1.0, 0.0, 2.0, 2.0, 5.0, 1.0]), torch.tensor([0, 0, 1, 1, 2, 2])
    assert group_advantages(rewards, groups).tolist() == pytest.approx([1, -1, 0, 0, 1, -1], abs=1e-5)
    x, mask = torch.tensor([[1.0, 3.0, 100.0]]), torch.tensor([[1, 1, 0]], dtype=torch.bool)
    assert whiten(x, mask)[0, :2].tolist() == pytest.approx([-1, 1], abs=1e-4)


def toy_policy() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig.from_name("tiny", vocab_size=8, block_size=32))


def share_of_token(completions: list[list[int]], groups: list[int], prompts: list[int]) -> list[float]:
    return [c.count(TOKEN) / max(len(c), 1) for c in completions]


def test_rollout_masks_the_completion_up_to_the_end_of_text():
    cfg = build(RlConfig, group_size=3, max_new_tokens=6, seed=0)
    roll = rollout(toy_policy(), [[1, 2], [5]], cfg, step=1, eos_id=7)
    assert roll.tokens.shape[0] == 6 and roll.groups.tolist() == [0, 0, 0, 1, 1, 1]
    for row, mask, completion in zip(roll.tokens.tolist(), roll.mask.tolist(), roll.completions, strict=True):
        start = 2 if row[:2] == [1, 2] else 1
        learned = [t for t, m in zip(row[1:], mask, strict=True) if m]
        assert learned[:len(completion)] == completion and 7 not in completion
        assert learned == completion + [7] or (len(completion) == 6 and learned == completion)
        assert not any(mask[:start - 1])


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_rl_raises_the_reward_on_the_toy_task(method):
    cfg = build(PpoConfig, max_steps=30, prompts_per_step=2, group_size=8, max_new_tokens=NEW, learning_rate=3e-3,
                value_lr=1e-2, kl_coef=0.05, seed=0)
    records = rl_train(cfg, method, toy_policy(), share_of_token, [[0], [1]], eos_id=None)[0]
    first, last = records[:5], records[-5:]
    before = sum(r["reward_mean"] for r in first) / 5
    after = sum(r["reward_mean"] for r in last) / 5
    assert before < 0.2 and after > before + 0.15  # random: about 1/8 of the tokens; the optimum is 1
    # the KL stays below that of the deterministic optimum (all tokens 3: NEW * log 8 nats from a uniform reference)
    # (the per-sample estimate log pi - log ref may dip below zero while the policy is still near the reference)
    assert all(-1 < r["kl"] < NEW * math.log(8) for r in records)
    assert {"reward_mean", "kl", "clip_fraction", "loss"} <= set(records[-1])
    assert ("value_loss" in records[-1]) == (method == "ppo")


def test_rl_refusals(tiny_model, tmp_path):
    with pytest.raises(GhoulError, match="exactly one"):
        run_grpo(build(RlConfig, policy=tiny_model, output_dir=tmp_path / "g"))
    with pytest.raises(GhoulError, match="--clip-eps"):
        RlConfig(clip_eps=1.5)
    with pytest.raises(GhoulError, match="--value-lr must be positive"):
        PpoConfig(value_lr=-1.0)
    with pytest.raises(GhoulError, match="--value-lr must be positive, got nan"):
        PpoConfig(value_lr=float("nan"))
    for name, message in (("learning_rate", "--learning-rate must be positive, got nan"),
                          ("kl_coef", "--kl-coef must be >= 0, got nan"), ("grad_clip", "--grad-clip must be >= 0")):
        with pytest.raises(GhoulError, match=message):  # NaN got past the checks, to torch's AdamW or into the weights
            RlConfig(**{name: float("nan")})
    with pytest.raises(GhoulError, match="--group-size must be at least 1"):
        RlConfig(group_size=0)
    with pytest.raises(GhoulError, match="--group-size must be at least 2 for GRPO"):
        run_grpo(build(RlConfig, policy=tiny_model, judge="length", group_size=1, output_dir=tmp_path / "g1"))
    assert not (tmp_path / "g1").exists()
    # a judge's pick of a group of one is that one: the reward would be the same for every sample
    with pytest.raises(GhoulError, match="--group-size must be at least 2 with --judge, got 1: the judge rewards"):
        run_ppo(build(PpoConfig, policy=tiny_model, judge="random", group_size=1, output_dir=tmp_path / "p1"))
    assert not (tmp_path / "p1").exists()


@pytest.mark.parametrize("method", ["ppo", "grpo"])
def test_interrupted_and_resumed_equals_uninterrupted(tiny_model, tmp_path, method, capsys):
    common = [method, "--policy", str(tiny_model), "--judge", "length", "--prompt", "The door", "--max-steps", "4",
              "--prompts-per-step", "2", "--group-size", "3", "--max-new-tokens", "8", "--learning-rate", "1e-3",
              "--checkpoint-every", "2", "--device", "cpu"]
    assert main([*common, "--output-dir", str(tmp_path / "a")]) == 0
    # a judge's picks make the mean reward 1/3 at every step: the run says so, and what measures progress
    assert "the mean reward stays at 1/3" in capsys.readouterr().err
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 0
    assert main([*common, "--output-dir", str(tmp_path / "b")]) == 2  # an existing run is not overwritten
    # a crash after step 2's checkpoint: resume from it (the log is cut back to step 2) and train the rest again
    assert main([*common, "--output-dir", str(tmp_path / "b"), "--resume", str(tmp_path / "b" / "step_000002")]) == 0
    a, b = read_jsonl(tmp_path / "a" / "log.jsonl"), read_jsonl(tmp_path / "b" / "log.jsonl")
    assert [r["step"] for r in b] == [1, 2, 3, 4]
    assert [{k: v for k, v in r.items() if k != "elapsed"} for r in a] == \
        [{k: v for k, v in r.items() if k != "elapsed"} for r in b]  # bitwise: rewards, KL, losses
    assert len({r["loss"] for r in a}) > 1
    wa, wb = load_model_dir(tmp_path / "a").state_dict(), load_model_dir(tmp_path / "b").state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    reference = load_model_dir(tiny_model).state_dict()
    assert not all(torch.equal(wa[k], reference[k]) for k in wa)  # it trained


def test_a_resume_without_steps_left_or_by_the_other_method_is_refused(tiny_model, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--policy", str(tiny_model), "--judge", "length", "--prompts-per-step", "1", "--group-size", "2",
              "--max-new-tokens", "4", "--output-dir", str(out), "--device", "cpu"]
    assert main(["ppo", *common, "--max-steps", "3"]) == 0
    before = sorted(p.name for p in out.iterdir()), (out / "config.json").read_text()
    capsys.readouterr()
    for args, message in [(["ppo", "--max-steps", "2"], "is at step 3, and --max-steps is 2: nothing to train"),
                          (["grpo", "--max-steps", "5"], "was saved by `ghoul ppo`, not by `ghoul grpo`")]:
        assert main([args[0], *common, *args[1:], "--resume"]) == 2
        assert message in capsys.readouterr().err
    assert (sorted(p.name for p in out.iterdir()), (out / "config.json").read_text()) == before


def interrupt_at_scorer_call(monkeypatch, n: int, interrupt: Callable[[], None]) -> None:
    """Have the `n`-th reward call of the run do `interrupt` (a Ctrl-C, as a signal or as the exception)."""
    make_scorer, calls = ppo.make_scorer, []

    def interrupting(*args):
        score = make_scorer(*args)

        def scorer(*batch):
            calls.append(1)
            if len(calls) == n:
                interrupt()
            return score(*batch)
        return scorer

    monkeypatch.setattr(ppo, "make_scorer", interrupting)


def grpo_args(tiny_model, out, max_steps: int) -> list[str]:
    return ["grpo", "--policy", str(tiny_model), "--judge", "length", "--max-steps", str(max_steps),
            "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "4", "--checkpoint-every", "2",
            "--output-dir", str(out), "--device", "cpu"]


def test_a_second_ctrl_c_stops_at_once_and_names_the_checkpoint_to_resume(tiny_model, tmp_path, monkeypatch,
                                                                           capsys):
    def second_ctrl_c():
        raise KeyboardInterrupt

    interrupt_at_scorer_call(monkeypatch, 3, second_ctrl_c)  # mid-step 3, after step 2's checkpoint
    out = tmp_path / "run"
    assert main(grpo_args(tiny_model, out, 4)) == 130
    assert f"stopped at once, saving nothing: the newest checkpoint is {out / 'step_000002'}; continue with " \
        "--resume" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2]


def test_a_ctrl_c_stops_after_the_step_and_names_its_checkpoint(tiny_model, tmp_path, monkeypatch, capsys):
    interrupt_at_scorer_call(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGINT))
    out = tmp_path / "run"
    assert main(grpo_args(tiny_model, out, 5)) == 130
    assert f"interrupted after step 3: saved {out / 'step_000003'}; continue with --resume" in capsys.readouterr().out
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3]


def test_a_non_finite_loss_stops_the_run_before_it_is_saved(tiny_model, tmp_path, monkeypatch):
    """As the training loop does: the diverged step is not saved, and the message names the last good checkpoint."""
    real, calls = ppo.clipped_policy_loss, []

    def nan_from_step_2(*args, **kwargs):
        calls.append(1)
        loss, clipped = real(*args, **kwargs)
        return (loss * float("nan") if len(calls) > 1 else loss), clipped
    monkeypatch.setattr(ppo, "clipped_policy_loss", nan_from_step_2)
    out = tmp_path / "g"
    with pytest.raises(GhoulError, match="the loss became nan at step 2; the last good checkpoint is step_000001: "
                                         "lower --learning-rate and --resume"):
        run_grpo(build(RlConfig, policy=tiny_model, judge="length", group_size=2, prompts_per_step=1, max_steps=3,
                       max_new_tokens=4, ppo_epochs=1, checkpoint_every=1, output_dir=out, device="cpu"))
    assert [p.name for p in sorted(out.glob("step_*"))] == ["step_000001"]
