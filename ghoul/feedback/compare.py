"""`ghoul compare`: the win-rate of model A over model B. Both continue the same prompts with the same seeds, a judge
picks the better of each pair shown in a random order, and the win-rate comes with a 95% Wilson interval: how a user
learns whether winners fine-tuning, DPO or PPO helped.
"""

from __future__ import annotations

import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from ghoul.checkpoint import read_model_config
from ghoul.config import group, option, require
from ghoul.errors import GhoulError
from ghoul.feedback.judges import Judge, JudgeOptions
from ghoul.feedback.records import full_text
from ghoul.files import append_jsonl
from ghoul.generate import GenerateConfig
from ghoul.generate import run as generate


def wilson_interval(wins: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score interval of a proportion wins/n (Wilson 1927); z = 1.96 gives 95%. Unlike the normal
    approximation it stays inside [0, 1] and is sensible for small n and for rates near 0 or 1."""
    if n == 0:
        return 0.0, 1.0
    p = wins / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class CompareConfig:
    a: Path | None = option(None, "model directory A (e.g. the aligned model) (required)", metavar="DIR")
    b: Path | None = option(None, "model directory B (e.g. the model before alignment) (required)",
                            metavar="DIR")
    n: int = option(100, "pairs to judge")
    prompt: str = option("", "text every story continues (empty: start from <|endoftext|>)")
    prompts_file: Path | None = option(None, "file of prompts, one per line, cycled over the pairs", metavar="FILE")
    max_new_tokens: int = option(128, "tokens per story")
    temperature: float = option(1.0, "sampling temperature")
    top_k: int | None = option(None, "sample only from the k most likely tokens")
    top_p: float | None = option(None, "sample only from the smallest set of tokens holding this probability")
    batch_size: int = option(16, "stories generated together on the device")
    out: Path | None = option(None, "write each pair's stories and judgment to this new JSON-lines file")
    seed: int = option(1337, "seed of the sampling (the same for A and B) and of the order shown")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    judging: JudgeOptions = group(JudgeOptions)

    def __post_init__(self) -> None:
        if self.a is None or self.b is None:
            raise GhoulError("--a DIR and --b DIR are required: the two models to compare")
        require(self, ("n",), lambda v: v >= 1, "at least 1")
        self.a, self.b = Path(self.a), Path(self.b)


@dataclass
class CompareResult:
    wins_a: int
    wins_b: int
    skipped: int
    win_rate: float  # of A, over the pairs judged
    low: float
    high: float

    def summary(self, a: Path, b: Path) -> str:
        n = self.wins_a + self.wins_b
        return (f"A ({a}) beats B ({b}) in {self.wins_a} of {n} pairs: win-rate {self.win_rate:.1%}, 95% CI "
                f"[{self.low:.1%}, {self.high:.1%}]" + (f"; {self.skipped} skipped" if self.skipped else ""))


def stories_of(cfg: CompareConfig, model: Path) -> list[dict]:
    """cfg.n stories of `model`; `ghoul generate` seeds each batch from (seed, batch), so A and B draw alike."""
    return generate(GenerateConfig(checkpoint=model, prompt=cfg.prompt, prompts_file=cfg.prompts_file,
                                   num_samples=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size,
                                   device=cfg.device, print_samples=False))


def judge_pairs(cfg: CompareConfig, judge: Judge, stories_a: list[dict], stories_b: list[dict]) -> CompareResult:
    """Judge A's story i against B's story i, in a random order (position bias cancels out on average)."""
    rng = random.Random(f"ghoul-compare:{cfg.seed}")
    wins_a = wins_b = skipped = 0
    judge.start(len(stories_a))
    try:
        for sa, sb in zip(stories_a, stories_b, strict=True):
            a_first = rng.random() < 0.5
            pair = [full_text(sa), full_text(sb)] if a_first else [full_text(sb), full_text(sa)]
            best = judge.judge(cfg.judging.task, pair).best
            winner = None if best is None else ("a" if (best == 0) == a_first else "b")
            wins_a, wins_b, skipped = wins_a + (winner == "a"), wins_b + (winner == "b"), skipped + (winner is None)
            if cfg.out is not None:
                append_jsonl(cfg.out, dict(id=sa["id"], prompt=sa["prompt"], a=sa["text"], b=sb["text"],
                                           a_shown_first=a_first, winner=winner, judge=judge.name))
    finally:
        judge.close()
    n = wins_a + wins_b
    return CompareResult(wins_a, wins_b, skipped, wins_a / n if n else float("nan"), *wilson_interval(wins_a, n))


def run(cfg: CompareConfig, judge: Judge | None = None) -> CompareResult:
    if cfg.out is not None and Path(cfg.out).exists():
        raise GhoulError(f"{cfg.out} exists: choose another --out")
    for model in (cfg.a, cfg.b):  # both must be there before either generates
        read_model_config(model)
    judge = judge or cfg.judging.make(cfg.seed)
    result = judge_pairs(cfg, judge, stories_of(cfg, cfg.a), stories_of(cfg, cfg.b))
    print(result.summary(cfg.a, cfg.b), file=sys.stderr)
    return result
