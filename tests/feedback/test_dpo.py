"""DPO: the loss against its formula on hand-made log-probabilities, completion log-probabilities against a direct
sum, and a short run on the marker preference that raises the chosen-minus-rejected margin."""

from __future__ import annotations

import math

import pytest
import torch

from ghoul.cli import main
from ghoul.config import build
from ghoul.errors import GhoulError
from ghoul.feedback.dpo import DpoConfig, completion_logps, dpo_loss
from ghoul.files import read_jsonl
from ghoul.model import GPT, GPTConfig
from tests.feedback.prefdata import write_marker_rankings


def test_dpo_loss_equals_the_formula():
    pc, pr = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    rc, rr = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -5.0])
    beta = 0.1
    # logits: 0.1 * ((-10 + 11) - (-12 + 11)) = 0.2 ; 0.1 * ((-4 + 4) - (-3 + 5)) = -0.2
    expected = (-math.log(1 / (1 + math.exp(-0.2))) - math.log(1 / (1 + math.exp(0.2)))) / 2
    loss, chosen, rejected = dpo_loss(pc, pr, rc, rr, beta)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert chosen.tolist() == pytest.approx([0.1, 0.0]) and rejected.tolist() == pytest.approx([-0.1, 0.2])
    # equal policy and reference: log 2, whatever the log-probabilities
    assert dpo_loss(pc, pr, pc, pr, 0.5)[0].item() == pytest.approx(math.log(2))


def test_completion_logps_sum_only_the_completion_tokens():
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_name("tiny", vocab_size=11, block_size=16)).eval()
    tokens = torch.tensor([[1, 2, 3, 4, 5, 0], [6, 7, 8, 9, 0, 0]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]], dtype=torch.bool)
    got = completion_logps(model, tokens, mask)
    logps = torch.log_softmax(model(tokens)[0], dim=-1)  # (B, T, V)
    for b in range(2):
        want = sum(logps[b, t - 1, tokens[b, t]] for t in range(1, 6) if mask[b, t])
        assert got[b].item() == pytest.approx(want.item(), abs=1e-5)


def test_dpo_on_the_marker_preference_raises_the_margin(tiny_model, tmp_path):
    rankings = write_marker_rankings(tmp_path / "data", groups=16)
    run = tmp_path / "dpo"
    assert main(["dpo", "--policy", str(tiny_model), "--rankings", str(rankings), "--output-dir", str(run),
                 "--beta", "0.1", "--max-steps", "10", "--learning-rate", "1e-3", "--batch-size", "4",
                 "--eval-every", "10", "--eval-iters", "2", "--val-fraction", "0.25", "--device", "cpu"]) == 0
    log = read_jsonl(run / "log.jsonl")
    val = [r for r in log if "val_loss" in r]
    assert [r["step"] for r in val] == [0, 10]
    assert val[0]["val_reward_margin"] == pytest.approx(0.0, abs=1e-6)  # policy == reference at the start
    assert val[-1]["val_reward_margin"] > 0.02 and val[-1]["val_loss"] < math.log(2)
    assert "val_bpb" not in val[-1]  # a loss over pairs, not nats per token: no bits per byte
    assert log[-1]["reward_margin"] > val[0]["val_reward_margin"] and log[-1]["reward_accuracy"] > 0.5
    assert {"chosen_reward", "rejected_reward", "val_reward_accuracy"} <= set(log[-1])
    assert (run / "latest").read_text().strip() == "step_000010"
    steps = [r["tokens"] for r in log if "loss" in r]
    # tokens read per step: 4 pairs = 8 rows as long as the longest short story, not 8 rows of the 128-token block
    assert all((b - a) % 8 == 0 and 8 * 4 <= b - a <= 8 * 32 for a, b in zip(steps, steps[1:], strict=False))


def test_dpo_config_refusals():
    with pytest.raises(GhoulError, match="--policy is required"):
        build(DpoConfig, rankings="r.jsonl")
    with pytest.raises(GhoulError, match="--beta must be positive"):
        build(DpoConfig, policy="p", rankings="r.jsonl", beta=0)
    with pytest.raises(GhoulError, match="--beta must be positive, got nan"):  # no NaN loss at step 1
        build(DpoConfig, policy="p", rankings="r.jsonl", beta=float("nan"))
    # pairs from `ghoul preferences` come made and split: what would make them from rankings is refused, not ignored
    for given, message in [({"rankings": "r.jsonl"}, "one of them"), ({"stories": "s.jsonl"}, "--stories is only read"),
                           ({"val_fraction": 0.5}, "--val-fraction is only read with --rankings"), ({}, "one of them")]:
        with pytest.raises(GhoulError, match=message):
            build(DpoConfig, policy="p", **({"preferences": "p.jsonl"} if given else {}), **given)
