"""`ghoul compare`: the win-rate of model A over model B. Both continue the same prompts with the same seeds, a judge
picks the better of each pair shown in a random order, and the win-rate comes with a 95% Wilson interval: how a user
learns whether winners fine-tuning, DPO or PPO helped. Each judgment is appended to --out as it arrives, so a rerun
of an interrupted comparison judges only the pairs left.
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
from ghoul.feedback.records import check_judged_alike, full_text
from ghoul.files import append_jsonl, read_jsonl, refuse_input_as_output, repair_jsonl
from ghoul.generate import GenerateConfig
from ghoul.generate import run as generate
from ghoul.interrupts import interrupt_held


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
    out: Path | None = option(None, "write each pair's stories and judgment to this JSON-lines file; a rerun of the "
                              "same command continues it", metavar="FILE")
    seed: int = option(1337, "seed of the sampling (the same for A and B) and of the order shown")
    device: str = option("auto", "cpu, cuda, mps, or auto")
    judging: JudgeOptions = group(JudgeOptions)

    def __post_init__(self) -> None:
        if self.a is None or self.b is None:
            raise GhoulError("--a DIR and --b DIR are required: the two models to compare")
        require(self, ("n", "max_new_tokens", "batch_size"), lambda v: v >= 1, "at least 1")
        self.a, self.b = Path(self.a), Path(self.b)
        if self.out is not None:
            self.out = Path(self.out)
            refuse_input_as_output(self.out, self.prompts_file)


@dataclass
class CompareResult:
    wins_a: int
    wins_b: int
    skipped: int
    win_rate: float  # of A, over the pairs judged
    low: float
    high: float
    ties: int = 0  # pairs of the same story from both: no preference, counted for neither

    def summary(self, a: Path, b: Path) -> str:
        n = self.wins_a + self.wins_b
        rate = (f"win-rate {self.win_rate:.1%}, 95% CI [{self.low:.1%}, {self.high:.1%}]" if n else
                "no win-rate: no pair was decided")
        return (f"A ({a}) beats B ({b}) in {self.wins_a} of {n} pairs: {rate}"
                + (f"; {self.skipped} skipped" if self.skipped else "")
                + (f"; {self.ties} ties (the same story from both)" if self.ties else ""))


def stories_of(cfg: CompareConfig, model: Path) -> list[dict]:
    """cfg.n stories of `model`; `ghoul generate` seeds story i from (seed, i), so A's and B's story i draw alike."""
    return generate(GenerateConfig(checkpoint=model, prompt=cfg.prompt, prompts_file=cfg.prompts_file,
                                   num_samples=cfg.n, max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                   top_k=cfg.top_k, top_p=cfg.top_p, seed=cfg.seed, batch_size=cfg.batch_size,
                                   device=cfg.device, print_samples=False))


def pairs_of(seed: int, stories_a: list[dict], stories_b: list[dict]) -> list[dict]:
    """The --out lines of the pairs before their judgments ("id" first: the key repair_jsonl knows our lines by).
    Whether A is shown first is one draw per pair in sequence, so pair i is shown alike in an uninterrupted run and
    in the rerun that continues an interrupted one."""
    rng = random.Random(f"ghoul-compare:{seed}")
    return [dict(id=sa["id"], prompt=sa["prompt"], a=sa["text"], b=sb["text"], a_shown_first=rng.random() < 0.5)
            for sa, sb in zip(stories_a, stories_b, strict=True)]


def tally(records: list[dict]) -> CompareResult:
    winners = [r["winner"] for r in records]
    wins_a, wins_b = winners.count("a"), winners.count("b")
    n = wins_a + wins_b
    return CompareResult(wins_a, wins_b, winners.count(None), wins_a / n if n else float("nan"),
                         *wilson_interval(wins_a, n), ties=winners.count(TIE))


RECORD_KEYS = ("id", "prompt", "a", "b", "a_shown_first", "winner", "judge")
TIE = "tie"  # the winner of a pair of the same story, which no judge is asked about


def earlier_judgments(cfg: CompareConfig, judge: str) -> list[dict]:
    """The judgments already in --out, checked for their form, judge, task and number before any story is generated:
    a file holds one comparison, so that its win-rate means one thing. `check_pairs` checks their stories after."""
    if cfg.out is None or not cfg.out.exists():
        return []
    records = read_jsonl(cfg.out)
    for n, r in enumerate(records, 1):
        if not isinstance(r, dict) or any(k not in r for k in RECORD_KEYS) or r["winner"] not in ("a", "b", TIE, None):
            raise GhoulError(f"{cfg.out}, record {n}: not a judgment of `ghoul compare` (it needs "
                             f"{', '.join(RECORD_KEYS)}): use another --out")
        check_judged_alike(cfg.out, r, judge, cfg.judging.task)
    if len(records) > cfg.n:
        raise GhoulError(f"{cfg.out} holds {len(records)} judged pairs, more than --n {cfg.n}: it holds another "
                         "comparison; rerun with the same options to continue it, or use another --out")
    repair_jsonl(cfg.out, "id")  # a torn last line (even the only one) is cut, a line that is not ours refused
    return records


def check_pairs(cfg: CompareConfig, earlier: list[dict], pairs: list[dict]) -> None:
    """Check that the judgments in --out are of the pairs generated now."""
    for r, pair in zip(earlier, pairs[:len(earlier)], strict=True):  # earlier_judgments: no more records than pairs
        if any(r[k] != v for k, v in pair.items()):
            raise GhoulError(f"{cfg.out} holds another comparison (pair {r['id']} differs: other models, prompts, "
                             "--seed, --n, --max-new-tokens or sampling options): rerun with the same options to "
                             "continue it, or use another --out")


def judge_pairs(cfg: CompareConfig, judge: Judge, stories_a: list[dict], stories_b: list[dict],
                earlier: list[dict] | None = None) -> CompareResult:
    """Judge A's story i against B's story i, in a random order (position bias cancels out on average); the pairs
    in `earlier` (checked judgments from --out) are counted, not judged again."""
    pairs, records = pairs_of(cfg.seed, stories_a, stories_b), list(earlier or [])
    todo = list(zip(stories_a, stories_b, pairs, strict=True))[len(records):]
    judge.start(sum(sa["text"] != sb["text"] for sa, sb, _ in todo))
    try:
        for sa, sb, pair in todo:
            a_first = pair["a_shown_first"]
            if sa["text"] == sb["text"]:  # the same story: whichever a judge picked, its place would decide
                winner = TIE
            else:
                shown = [full_text(sa), full_text(sb)] if a_first else [full_text(sb), full_text(sa)]
                best = judge.judge(cfg.judging.task, shown).best
                winner = None if best is None else ("a" if (best == 0) == a_first else "b")
            with interrupt_held():  # the pairs counted are the pairs saved
                records.append(dict(pair, winner=winner, judge=judge.name, task=cfg.judging.task))
                if cfg.out is not None:
                    append_jsonl(cfg.out, records[-1])  # saved before the next pair is shown
    except KeyboardInterrupt:
        if cfg.out is not None:
            print(f"interrupted: {len(records)} of {len(stories_a)} pairs are judged and saved in {cfg.out}; rerun "
                  f"the same command to judge the remaining {len(stories_a) - len(records)}", file=sys.stderr)
        raise
    finally:
        judge.close()
    return tally(records)


def run(cfg: CompareConfig, judge: Judge | None = None) -> CompareResult:
    """Compare cfg.a with cfg.b over cfg.n pairs, continuing the judgments an earlier run left in cfg.out."""
    for model in (cfg.a, cfg.b):  # both must be there before either generates
        read_model_config(model)
    earlier = earlier_judgments(cfg, judge.name if judge else cfg.judging.name)  # refused before minutes of generation
    if judge is None:
        cfg.judging.check()  # so is a judge that cannot work here: a missing key or package
    stories_a, stories_b = stories_of(cfg, cfg.a), stories_of(cfg, cfg.b)
    check_pairs(cfg, earlier, pairs_of(cfg.seed, stories_a, stories_b))
    if len(earlier) == cfg.n:
        print(f"{cfg.out}: all {cfg.n} pairs are judged; nothing to do", file=sys.stderr)
        result = tally(earlier)
    else:
        if earlier:
            print(f"{cfg.out}: {len(earlier)} of {cfg.n} pairs judged before; judging the other "
                  f"{cfg.n - len(earlier)}", file=sys.stderr)
        result = judge_pairs(cfg, judge or cfg.judging.make(cfg.seed), stories_a, stories_b, earlier)
    print(result.summary(cfg.a, cfg.b), file=sys.stderr)
    return result
