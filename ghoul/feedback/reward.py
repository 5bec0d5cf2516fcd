"""The reward model: the GPT backbone with a scalar head read at the last token, trained on preference pairs with
the Bradley-Terry loss through the one training loop (`ghoul reward train`), used to score stories
(`ghoul reward score`) and as a judge that costs no API calls (`--judge reward:DIR`).

A reward model directory is a model directory whose `config.json` says `"kind": "reward"` and whose
`model.safetensors` holds the head too (`score.weight`, `score.bias`); `ghoul.checkpoint` loads it as this class.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ghoul.checkpoint import MODEL_KINDS, load_model_and_tokenizer, load_model_dir
from ghoul.config import group, option, require
from ghoul.dist import default_device, resolve_device
from ghoul.errors import GhoulError
from ghoul.feedback.judges import JUDGE_KINDS, Judge, Judgment
from ghoul.feedback.preferences import PairBatchOptions, PairOptions, collate, encode_pair_side, train_on_pairs
from ghoul.feedback.records import STORIES_FILE, full_text, load_stories
from ghoul.files import refuse_input_as_output, refuse_to_replace, write_jsonl
from ghoul.layout import resolve_checkpoint
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer import Tokenizer, load_tokenizer
from ghoul.train.config import LoopOptions, OptimOptions, RunOptions, check_training


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected), the mean over pairs: the negative log-likelihood of the preferences
    under the Bradley-Terry model P(a beats b) = sigmoid(r_a - r_b) (Bradley and Terry 1952; InstructGPT, eq. 1)."""
    return -F.logsigmoid(chosen.float() - rejected.float()).mean()


class RewardModel(GPT):
    """GPT whose forward gives one scalar per row: a linear head on the final hidden state of the row's last
    completion token (the <|endoftext|> that ends each story), having read the whole text."""

    dir_config = {"kind": "reward"}  # written into config.json by ghoul.checkpoint

    def __init__(self, config: GPTConfig) -> None:
        super().__init__(config)
        # no language-model head: an untied one would get no gradient, which DDP refuses ("Expected to have
        # finished reduction in the prior iteration"); the language model's head is dropped when loading
        del self.lm_head
        self.register_load_state_dict_pre_hook(_drop_lm_head)
        self.score = nn.Linear(config.n_embd, 1)
        nn.init.zeros_(self.score.weight)  # every text starts at reward 0: a loss of log 2 at step 0
        nn.init.zeros_(self.score.bias)

    @classmethod
    def from_gpt(cls, gpt: GPT) -> RewardModel:
        """A reward model whose backbone is `gpt`'s (its language-model head left behind)."""
        model = cls(gpt.config)
        missing, unexpected = model.load_state_dict(gpt.state_dict(), strict=False)
        assert not unexpected and set(missing) <= {"score.weight", "score.bias"}, (missing, unexpected)
        return model

    def flops_per_token(self, seq_len: int) -> float:
        """GPT's count without the output layer: the token table, tied or not, is only a lookup here."""
        return super().flops_per_token(seq_len) - (6 * self._numel("wte") if self.config.tie_embeddings else 0)

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Rewards (B,) of `tokens` (B, T) whose `mask` (B, T) marks the completion; read at its last token.
        (The reward is the forward pass, so that DDP sees it and synchronises the gradients.)"""
        h = self.hidden_states(tokens)  # (B, T, C)
        last = mask.size(1) - 1 - mask.flip(1).int().argmax(dim=1)  # (B,) index of each row's last completion token
        return self.score(h[torch.arange(h.size(0), device=h.device), last]).squeeze(-1).float()  # (B,)


MODEL_KINDS["reward"] = RewardModel  # load_model_dir(kind="reward") builds this class


def _drop_lm_head(module: nn.Module, state_dict: dict, prefix: str, *_) -> None:
    """A language model's head (and that of reward models saved before it was dropped) is not part of a reward
    model."""
    state_dict.pop(prefix + "lm_head.weight", None)


def reward_loss(model: nn.Module, tokens: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Bradley-Terry loss of a batch of B chosen rows followed by B rejected rows, with pairwise accuracy."""
    rewards = model(tokens, mask)  # (2B,)
    chosen, rejected = rewards.chunk(2)
    metrics = {"accuracy": (chosen > rejected).float().mean(), "margin": (chosen - rejected).mean()}
    return bradley_terry_loss(chosen, rejected), metrics


# ---- ghoul reward train --------------------------------------------------------------------------------------

@dataclass
class RewardTrainConfig:
    """`ghoul reward train`: a reward model on preference pairs."""

    base_model: Path | None = option(None, "model directory whose backbone the reward model starts from (required, "
                                           "unless --resume)")
    pairs: PairOptions = group(PairOptions)
    run: RunOptions = group(RunOptions, output_dir=Path("runs/reward"))
    optim: OptimOptions = group(OptimOptions, learning_rate=3e-5)
    batch: PairBatchOptions = group(PairBatchOptions)
    loop: LoopOptions = group(LoopOptions, eval_every=10)

    def __post_init__(self) -> None:
        if self.base_model is None and self.run.resume is None:
            raise GhoulError("--base-model is required: the model directory whose backbone the reward model uses")
        check_training(self)


def train_run(cfg: RewardTrainConfig):
    """Train a reward model on the pairs of cfg.preferences or cfg.rankings; RUN/latest is the reward model."""
    def build(resume_from: Path | None, device: str) -> tuple[RewardModel, Tokenizer, object]:
        if resume_from is not None:
            return *load_reward_model(resume_from), reward_loss
        return RewardModel.from_gpt(load_model_dir(cfg.base_model)), load_tokenizer(cfg.base_model), reward_loss

    return train_on_pairs(cfg, build, join=True)  # joined: the model reads texts as a judge is shown them


def load_reward_model(directory: str | Path, device: str = "cpu") -> tuple[RewardModel, Tokenizer]:
    return load_model_and_tokenizer(directory, device, kind="reward")


@torch.no_grad()
def score_texts(model: RewardModel, tokenizer: Tokenizer, texts: list[str], batch_size: int = 16) -> list[float]:
    """The reward of each text (prompt and story as one), in batches."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rewards: list[float] = []
    for i in range(0, len(texts), batch_size):
        rows = [encode_pair_side(tokenizer, "", t, model.config.block_size, join=True) for t in texts[i:i + batch_size]]
        rewards += model(*collate(rows, tokenizer.eot_id, device)).tolist()
    model.train(was_training)
    return rewards


class RewardJudge(Judge):
    """`--judge reward:DIR`: the candidate with the highest reward wins; the rewards are the reason."""

    def __init__(self, directory: str | Path, device: str = "cpu") -> None:
        self.model, self.tokenizer = load_reward_model(directory, device)
        self.name = f"reward:{directory}"

    def judge(self, task: str, candidates: list[str]) -> Judgment:
        rewards = score_texts(self.model, self.tokenizer, candidates)
        best = max(range(len(candidates)), key=lambda i: (rewards[i], -i))
        return Judgment(best, f"reward {rewards[best]:.3f}", json.dumps([round(r, 4) for r in rewards]))


JUDGE_KINDS["reward"] = lambda directory, **_: RewardJudge(directory, default_device())  # no API calls


# ---- ghoul reward score --------------------------------------------------------------------------------------

@dataclass
class ScoreConfig:
    model: Path = option(Path("runs/reward"), "reward model directory (or its run directory)")
    stories: Path = option(Path(STORIES_FILE), "stories to score, as written by `ghoul generate --out`")
    out: Path | None = option(None, "write the stories with a `reward` field to this file (default: print each "
                                    "story's id and reward)")
    batch_size: int = option(16, "stories scored together")
    device: str = option("auto", "cpu, cuda, mps, or auto")

    def __post_init__(self) -> None:
        require(self, ("batch_size",), lambda v: v >= 1, "at least 1")
        if self.out is not None:
            refuse_input_as_output(self.out, resolve_checkpoint(self.model), self.stories)
            refuse_to_replace(self.out, ("id", "reward"))


def score_run(cfg: ScoreConfig) -> list[dict]:
    stories = load_stories(Path(cfg.stories))
    if not stories:
        raise GhoulError(f"{cfg.stories} holds no stories: make them with `ghoul generate --out {cfg.stories}`")
    model, tokenizer = load_reward_model(cfg.model, resolve_device(cfg.device))
    ids = sorted(stories)
    rewards = score_texts(model, tokenizer, [full_text(stories[i]) for i in ids], cfg.batch_size)
    records = [{**stories[i], "reward": r} for i, r in zip(ids, rewards, strict=True)]
    if cfg.out is not None:
        write_jsonl(cfg.out, records)
    else:
        for r in records:
            print(f"{r['id']}\t{r['reward']:.4f}")
    mean = sum(rewards) / len(rewards)
    print(f"{len(records)} stories scored: mean reward {mean:.4f}, max {max(rewards):.4f}, min {min(rewards):.4f}",
          file=sys.stderr)
    return records

