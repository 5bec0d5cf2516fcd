"""`ghoul rank`: split stories.jsonl into groups and have a judge pick the best of each, into rankings.jsonl.

Groups are formed reproducibly from a seed, of stories that continue the same prompt. Each judgment is appended and
flushed as it arrives, so a crash loses at most the group being judged and a rerun skips the groups already judged.
"""

from __future__ import annotations

import random
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ghoul.config import group, option
from ghoul.errors import GhoulError
from ghoul.feedback.judges import Judge, JudgeOptions
from ghoul.files import append_jsonl, read_jsonl, refuse_input_as_output, repair_jsonl

# Characters of a judge's raw answer and reason kept in rankings.jsonl: a broken server's 30 MB answer must not
# become a 60 MB rankings file (an answer within the judge's max_tokens is far shorter)
RAW_LIMIT = 2000


@dataclass
class RankConfig:
    stories: Path = option(Path("stories.jsonl"), "stories to judge, as written by `ghoul generate --out`")
    out: Path = option(Path("rankings.jsonl"), "judgments, one JSON line per group; a rerun resumes it")
    group_size: int = option(4, "stories per group; the judge picks one of them")
    seed: int = option(1337, "random seed of the grouping (and of the judge's shuffling)")
    max_groups: int | None = option(None, "judge only the first N groups")
    retry_skipped: bool = option(False, "judge again the groups a judge skipped in an earlier run")
    judging: JudgeOptions = group(JudgeOptions)

    def __post_init__(self) -> None:
        self.stories, self.out = Path(self.stories), Path(self.out)
        refuse_input_as_output(self.out, self.stories)
        if self.group_size < 2:
            raise GhoulError(f"--group-size must be at least 2, got {self.group_size}")
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


def full_text(story: dict[str, Any]) -> str:
    """The story as a reader sees it: the prompt and its continuation."""
    return f"{story.get('prompt', '')}{story['text']}"


def load_stories(path: Path) -> dict[int, dict[str, Any]]:
    """Stories by id, checked for the fields ranking needs."""
    if not path.is_file():
        raise GhoulError(f"stories file {path} does not exist: make it with `ghoul generate --out {path}`")
    stories = {}
    for n, record in enumerate(read_jsonl(path), 1):
        if not isinstance(record, dict) or not isinstance(record.get("id"), int) or \
                not isinstance(record.get("text"), str):
            raise GhoulError(f"{path}, record {n}: a story needs an integer 'id' and a 'text'")
        if record["id"] in stories:
            raise GhoulError(f"{path}, record {n}: story id {record['id']} appears twice; ids must be unique")
        stories[record["id"]] = record
    return stories


def stories_judged(rankings: str | Path, stories: str | Path | None = None) -> Path:
    """The stories file a rankings file judged: `stories` when given, else the stories.jsonl beside it."""
    return Path(stories) if stories else Path(rankings).with_name("stories.jsonl")


def load_rankings(path: Path) -> list[dict[str, Any]]:
    """Judgments of `ghoul rank`, checked for the fields that winners and preference pairs are made from."""
    if not path.is_file():
        raise GhoulError(f"rankings file {path} does not exist: make it with `ghoul rank`")
    records = read_jsonl(path)
    for n, r in enumerate(records, 1):
        shown = r.get("shown") if isinstance(r, dict) else None
        if not (isinstance(r, dict) and isinstance(r.get("group"), int) and isinstance(shown, list)
                and all(isinstance(i, int) for i in shown) and (r.get("chosen") is None or r["chosen"] in shown)):
            raise GhoulError(f"{path}, record {n}: a judgment needs an integer 'group', the story ids 'shown', and "
                             "a 'chosen' id among them (or null): was it written by `ghoul rank`?")
    return records


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


def earlier_judgments(cfg: RankConfig, groups: list[list[int]]) -> dict[int, dict[str, Any]]:
    """The last judgment of each group already in --out, checked against the groups formed now."""
    if not cfg.out.exists():
        return {}
    done = {}
    for record in load_rankings(cfg.out):  # every complete line is checked before a torn last one is cut
        g = record["group"]
        if not 0 <= g < len(groups) or sorted(record["shown"]) != sorted(groups[g]):
            raise GhoulError(f"{cfg.out} holds judgments of other groups (group {g}): it was made from other "
                             "stories, --group-size or --seed; use another --out")
        done[g] = record
    repair_jsonl(cfg.out, "group")
    return done


def judgment_record(group: int, ids: list[int], judge: Judge, judgment: Any, task: str, seconds: float
                    ) -> dict[str, Any]:
    """The rankings.jsonl line of one group: the ids in the order shown and the chosen one mapped back to its id."""
    k = len(ids)
    shown = judgment.shown or list(range(k))
    if sorted(shown) != list(range(k)) or (judgment.best is not None and not 0 <= judgment.best < k):
        raise GhoulError(f"judge {judge.name} returned an impossible answer for group {group}: {judgment}")
    chosen = None if judgment.best is None else ids[judgment.best]
    record = {"group": group, "shown": [ids[i] for i in shown], "chosen": chosen,
              "position": None if chosen is None else shown.index(judgment.best) + 1, "judge": judge.name,
              "task": task, "reason": excerpt(judgment.reason), "raw": excerpt(judgment.raw),
              "time": datetime.now(UTC).isoformat(timespec="seconds"), "seconds": round(seconds, 3),
              "skipped": chosen is None}
    if judgment.usage:
        record["usage"] = judgment.usage
    return record


def excerpt(text: str, limit: int = RAW_LIMIT) -> str:
    """`text`, or its first `limit` characters and how many more there were."""
    return text if len(text) <= limit else f"{text[:limit]} [... {len(text) - limit:,} more characters cut]"


def run(cfg: RankConfig, judge: Judge | None = None) -> RankResult:
    """Judge every group not yet in cfg.out (with `judge`, or the one cfg.judging names) and print a summary."""
    start = time.perf_counter()
    stories = load_stories(cfg.stories)
    groups = make_groups(stories, cfg.group_size, cfg.seed)[:cfg.max_groups]
    if not groups:
        raise GhoulError(f"{cfg.stories} holds too few stories of one prompt for a group of {cfg.group_size}: "
                         "generate more or lower --group-size")
    done = earlier_judgments(cfg, groups)
    todo = [g for g in range(len(groups)) if g not in done or (cfg.retry_skipped and done[g].get("skipped"))]
    result = RankResult(cfg.out, len(groups), 0, 0, len(groups) - len(todo), 0.0)
    if not todo:
        print(f"{cfg.out}: all {len(groups)} groups are judged; nothing to do", file=sys.stderr)
        return result
    left_out = len(stories) - sum(map(len, groups))
    print(f"{len(groups)} groups of {cfg.group_size} from {len(stories)} stories ({left_out} left out), "
          f"{len(todo)} to judge", file=sys.stderr)
    judge = judge or cfg.judging.make(cfg.seed)
    interactive = getattr(judge, "interactive", False)
    bar = tqdm(todo, desc="judging", unit="group", file=sys.stderr, disable=interactive, dynamic_ncols=True)
    try:
        judge.start(len(todo))
        for g in bar:
            ids = groups[g]
            t0 = time.perf_counter()
            judgment = judge.judge(cfg.judging.task, [full_text(stories[i]) for i in ids])
            record = judgment_record(g, ids, judge, judgment, cfg.judging.task, time.perf_counter() - t0)
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
        counts = Counter(result.positions)
        words.append("chosen position " + " ".join(f"{p}:{counts[p]}" for p in sorted(counts)))
    done = result.before + result.judged
    tail = f"; interrupted: rerun to judge the remaining {result.groups - done}" if interrupted else ""
    print(f"{'; '.join(words)}; {done}/{result.groups} groups in {result.out}{tail}", file=sys.stderr)
