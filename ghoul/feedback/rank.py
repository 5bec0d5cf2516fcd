"""`ghoul rank`: split stories.jsonl into groups and have a judge pick the best of each, into rankings.jsonl.

Groups are formed reproducibly from a seed, of stories that continue the same prompt. Each judgment is appended and
flushed as it arrives, so a crash loses at most the group being judged and a rerun skips the groups already judged.
"""

from __future__ import annotations

import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ghoul.config import group, option, require
from ghoul.errors import GhoulError
from ghoul.feedback.judges import Judge, JudgeOptions
from ghoul.feedback.records import (
    RANKINGS_FILE,
    STORIES_FILE,
    check_judged_alike,
    full_text,
    judgment_record,
    load_rankings,
    load_stories,
)
from ghoul.files import append_jsonl, refuse_input_as_output, repair_jsonl
from ghoul.interrupts import interrupt_held


@dataclass
class RankConfig:
    stories: Path = option(Path(STORIES_FILE), "stories to judge, as written by `ghoul generate --out`")
    out: Path = option(Path(RANKINGS_FILE), "judgments, one JSON line per group; a rerun resumes it")
    group_size: int = option(4, "stories per group; the judge picks one of them")
    seed: int = option(1337, "random seed of the grouping (and of the judge's shuffling)")
    max_groups: int | None = option(None, "judge only the first N groups")
    retry_skipped: bool = option(False, "judge again the groups a judge skipped in an earlier run")
    judging: JudgeOptions = group(JudgeOptions)

    def __post_init__(self) -> None:
        self.stories, self.out = Path(self.stories), Path(self.out)
        refuse_input_as_output(self.out, self.stories)
        require(self, ("group_size",), lambda v: v >= 2, "at least 2")
        if self.max_groups is not None and self.max_groups < 1:
            raise GhoulError("--max-groups must be at least 1")


@dataclass
class RankResult:
    out: Path
    groups: int  # groups formed
    judged: int  # judged by this run, skips included
    skipped: int  # of those, how many without a choice
    before: int  # groups already judged by earlier runs
    seconds: float
    usage: dict[str, int] = field(default_factory=dict)
    cost: float | None = None  # estimated USD of this run, for API judges with a known price
    positions: dict[int, int] = field(default_factory=dict)  # chosen position as shown -> count (position bias)


def make_groups(stories: dict[int, dict[str, Any]], group_size: int, seed: int) -> list[list[int]]:
    """Story ids per group: stories of the same prompt shuffled with the seed and cut into groups; the leftovers
    (fewer than group_size for a prompt) are left out. The same stories and seed always give the same groups."""
    by_prompt: dict[str, list[int]] = {}
    for i in sorted(stories):
        by_prompt.setdefault(stories[i].get("prompt", ""), []).append(i)
    groups = []
    for p, ids in enumerate(by_prompt.values()):
        random.Random(f"ghoul-rank:{seed}:{p}").shuffle(ids)  # str seeds hash with sha512: stable across runs
        groups += [ids[k:k + group_size] for k in range(0, len(ids) - group_size + 1, group_size)]
    return groups


def earlier_judgments(cfg: RankConfig, groups: list[list[int]], judge: str) -> dict[int, dict[str, Any]]:
    """The last judgment of each group already in --out, checked against the groups formed now and the judge and
    task asked now: a rankings file holds one judge's picks for one task, so that winners and win-rates mean one
    thing."""
    if not cfg.out.exists():
        return {}
    done = {}
    for record in load_rankings(cfg.out):  # every complete line is checked before a torn last one is cut
        g = record["group"]
        if not 0 <= g < len(groups) or sorted(record["shown"]) != sorted(groups[g]):
            raise GhoulError(f"{cfg.out} holds judgments of other groups (group {g}): it was made from other "
                             "stories, --group-size or --seed; use another --out (ghoul rlhf: --output-dir)")
        check_judged_alike(cfg.out, record, judge, cfg.judging.task, "use another --out (ghoul rlhf: --output-dir)")
        done[g] = record
    repair_jsonl(cfg.out, "group")
    return done


def run(cfg: RankConfig, judge: Judge | None = None) -> RankResult:
    """Judge every group not yet in cfg.out (with `judge`, or the one cfg.judging names) and print a summary."""
    start = time.perf_counter()
    stories = load_stories(cfg.stories)
    groups = make_groups(stories, cfg.group_size, cfg.seed)[:cfg.max_groups]
    if not groups:
        raise GhoulError(f"{cfg.stories} holds too few stories of one prompt for a group of {cfg.group_size}: "
                         "generate more or lower --group-size")
    done = earlier_judgments(cfg, groups, judge.name if judge else cfg.judging.name)
    todo = [g for g in range(len(groups)) if g not in done or (cfg.retry_skipped and done[g].get("skipped"))]
    result = RankResult(cfg.out, len(groups), 0, 0, len(groups) - len(todo), 0.0)
    if not todo:
        print(f"{cfg.out}: all {len(groups)} groups are judged; nothing to do", file=sys.stderr)
        return result
    left_out = len(stories) - sum(map(len, groups))
    print(f"{len(groups)} groups of {cfg.group_size} from {len(stories)} stories ({left_out} left out), "
          f"{len(todo)} to judge", file=sys.stderr)
    judge = judge or cfg.judging.make(cfg.seed)
    bar = tqdm(todo, desc="judging", unit="group", file=sys.stderr, disable=judge.interactive, dynamic_ncols=True)
    try:
        judge.start(len(todo))
        for g in bar:
            ids = groups[g]
            t0 = time.perf_counter()
            judgment = judge.judge(cfg.judging.task, [full_text(stories[i]) for i in ids])
            record = judgment_record(g, ids, judge, judgment, cfg.judging.task, time.perf_counter() - t0)
            with interrupt_held():  # a Ctrl-C now would leave it saved and not counted in the summary
                append_jsonl(cfg.out, record)  # saved before the next group is shown
                _count(result, record)
    except KeyboardInterrupt:
        _summary(result, judge, start, interrupted=True)
        raise
    finally:
        bar.close()
        judge.close()
    _summary(result, judge, start)
    return result


def _count(result: RankResult, record: dict[str, Any]) -> None:
    result.judged += 1
    result.skipped += record["skipped"]
    if record["position"] is not None:
        result.positions[record["position"]] = result.positions.get(record["position"], 0) + 1
    for k, v in record.get("usage", {}).items():
        result.usage[k] = result.usage.get(k, 0) + v


def _summary(result: RankResult, judge: Judge, start: float, interrupted: bool = False) -> None:
    result.seconds = time.perf_counter() - start
    result.cost = judge.cost(result.usage) if result.usage else None
    words = [f"judged {result.judged} groups ({result.skipped} skipped) in {result.seconds:.1f}s"]
    if result.before:
        words.append(f"{result.before} judged before")
    if result.usage:
        words.append(f"{result.usage.get('prompt_tokens', 0):,} prompt + "
                     f"{result.usage.get('completion_tokens', 0):,} completion tokens")
    if result.cost is not None:
        words.append(f"about ${result.cost:.4f}")
    if result.positions:
        words.append("chosen position " + " ".join(f"{p}:{n}" for p, n in sorted(result.positions.items())))
    done = result.before + result.judged
    tail = f"; interrupted: rerun to judge the remaining {result.groups - done}" if interrupted else ""
    print(f"{'; '.join(words)}; {done}/{result.groups} groups in {result.out}{tail}", file=sys.stderr)
