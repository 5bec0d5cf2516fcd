"""Direct Preference Optimization (Rafailov et al. 2023): learn from preference pairs without a reward model, by
raising the policy's log-probability of the chosen completion over the rejected one relative to a frozen reference
copy. `ghoul dpo` runs it through the one training loop (checkpoints, resume, logging, DDP are the loop's).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ghoul.checkpoint import load_model_dir
from ghoul.config import group, option, require
from ghoul.errors import GhoulError
from ghoul.feedback.preferences import PairBatchOptions, PairOptions, train_on_pairs
from ghoul.model import GPT
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.train.config import LoopOptions, OptimOptions, RunOptions, check_training


def token_logps(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[:, t] | tokens[:, :t]) for t = 1..T-1: (B, T-1), in float32."""
    logits = model(tokens[:, :-1])[0]  # (B, T-1, V)
    logps = F.log_softmax(logits.float(), dim=-1)
    return logps.gather(-1, tokens[:, 1:, None]).squeeze(-1)  # (B, T-1)


def completion_logps(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The log-probability of each row's completion: token log-probabilities summed over the masked tokens only
    (the prompt and the padding do not count). (B,)"""
    return (token_logps(model, tokens) * mask[:, 1:]).sum(-1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor,
             ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, chosen rewards, rejected rewards) from summed completion log-probabilities (B,) each.

    The loss is -log sigmoid(beta * ((pi_c - ref_c) - (pi_r - ref_r))), the mean over pairs (Rafailov et al. 2023,
    eq. 7); the implicit rewards beta * (pi - ref) are returned detached, for logging.
    """
    logits = beta * ((policy_chosen - ref_chosen) - (policy_rejected - ref_rejected))
    loss = -F.logsigmoid(logits).mean()
    return loss, beta * (policy_chosen - ref_chosen).detach(), beta * (policy_rejected - ref_rejected).detach()


class DpoLoss:
    """`loss_fn(model, tokens, mask)` for the training loop: the DPO loss against a frozen copy of the policy,
    with the reward margin and accuracy (how often the chosen completion gets the larger implicit reward)."""

    def __init__(self, reference: GPT, beta: float) -> None:
        self.reference = copy.deepcopy(reference).eval().requires_grad_(False)
        self.beta = beta

    def __call__(self, model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
        self.reference.to(tokens.device)
        policy = completion_logps(model, tokens, mask)  # (2B,): B chosen rows, then B rejected
        with torch.no_grad():
            ref = completion_logps(self.reference, tokens, mask)
        loss, chosen, rejected = dpo_loss(*policy.chunk(2), *ref.chunk(2), self.beta)
        return loss, {"reward_margin": (chosen - rejected).mean(),
                      "reward_accuracy": (chosen > rejected).float().mean(),
                      "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}


@dataclass
class DpoConfig:
    """`ghoul dpo`: a model aligned on preference pairs."""

    policy: Path | None = option(None, "the model directory to align; also the frozen reference (required)",
                                 metavar="DIR")
    beta: float = option(0.1, "DPO's beta: how far the policy may move from the reference (higher: less far)")
    pairs: PairOptions = group(PairOptions)
    run: RunOptions = group(RunOptions, output_dir=Path("runs/dpo"))
    optim: OptimOptions = group(OptimOptions, learning_rate=5e-6)  # DPO wants small ones
    batch: PairBatchOptions = group(PairBatchOptions)
    loop: LoopOptions = group(LoopOptions, eval_every=10)

    def __post_init__(self) -> None:
        if self.policy is None:
            raise GhoulError("--policy is required: the model directory to align (the reference too)")
        require(self, ("beta",), lambda v: v > 0, "positive")  # NaN too
        self.policy = Path(self.policy)
        check_training(self)


def run(cfg: DpoConfig):
    """Align cfg.policy on the pairs with DPO; RUN/latest is the aligned model."""
    def build(resume_from: Path | None, device: str) -> tuple[GPT, Tokenizer, DpoLoss]:
        reference = load_model_dir(cfg.policy, device)
        policy = load_model_dir(resume_from, device) if resume_from is not None else copy.deepcopy(reference)
        return policy, load_tokenizer(cfg.policy), DpoLoss(reference, cfg.beta)

    return train_on_pairs(cfg, build)
