"""The feedback stage's files: stories.jsonl (stories, as `ghoul generate` writes them) and rankings.jsonl (a
judge's pick of each group, as `ghoul rank` writes them), their readers and records, and where `ghoul rlhf` keeps
each step's output in its run directory.
"""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ghoul.errors import GhoulError
from ghoul.feedback.judges import Judge, judge_flags
from ghoul.files import read_jsonl, require_file

STORIES_FILE = "stories.jsonl"
RANKINGS_FILE = "rankings.jsonl"
WINNERS_FILE = "winners.jsonl"  # read by the jsonl data source: `ghoul prepare jsonl`
# Characters of a judge's raw answer and reason kept in rankings.jsonl: a broken server's 30 MB answer must not
# become a 60 MB rankings file (an answer within the judge's max_tokens is far shorter)
RAW_LIMIT = 2000


class FeedbackRun:
    """The run directory of `ghoul rlhf`: each step's output, which a rerun finds and skips when complete."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.stories = root / STORIES_FILE
        self.rankings = root / RANKINGS_FILE
        self.winners = root / WINNERS_FILE
        self.winners_data = root / "data" / "winners"
        self.reward = root / "reward"

    def model(self, method: str) -> Path:
        """The run of the model that `method` trains."""
        return self.root / FINAL_DIRS[method]


FINAL_DIRS = {"winners": "finetune", "dpo": "dpo", "ppo": "ppo", "grpo": "grpo"}  # the model each method trains
FEEDBACK_DIR = "rlhf"  # the feedback run inside a pipeline run


def full_text(story: dict[str, Any]) -> str:
    """The story as a reader sees it: the prompt and its continuation."""
    return f"{story.get('prompt', '')}{story['text']}"


def load_stories(path: Path) -> dict[int, dict[str, Any]]:
    """Stories by id, checked for the fields ranking needs."""
    require_file(path, "stories file", f"make it with `ghoul generate --out {path}`")
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
    return Path(stories) if stories else Path(rankings).with_name(STORIES_FILE)


def check_judged_alike(out: Path, record: dict[str, Any], judge: str, task: str, elsewhere: str = "use another --out"
                       ) -> None:
    """A file of judgments holds one judge's picks for one task, so that its winners and win-rates mean one thing: a
    one-line error for a record of another (records written before the task was recorded have none)."""
    for what, now in (("judge", judge), ("task", task)):
        if record.get(what, now) != now:
            again = judge_flags(record[what]) if what == "judge" else f"--task {shlex.quote(record[what])}"
            raise GhoulError(f"{out} holds judgments with the {what} {record[what]!r}, not {now!r}: rerun with "
                             f"{again} to continue it, or {elsewhere}")


def load_rankings(path: Path) -> list[dict[str, Any]]:
    """Judgments of `ghoul rank`, checked for the fields that winners and preference pairs are made from."""
    require_file(path, "rankings file", "make it with `ghoul rank`")
    records = read_jsonl(path)
    for n, r in enumerate(records, 1):
        shown = r.get("shown") if isinstance(r, dict) else None
        if not (isinstance(r, dict) and isinstance(r.get("group"), int) and isinstance(shown, list)
                and all(isinstance(i, int) for i in shown) and (r.get("chosen") is None or r["chosen"] in shown)):
            raise GhoulError(f"{path}, record {n}: a judgment needs an integer 'group', the story ids 'shown', and "
                             "a 'chosen' id among them (or null): was it written by `ghoul rank`?")
    return records


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
