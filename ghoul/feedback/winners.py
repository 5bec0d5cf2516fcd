"""`ghoul export winners`: the stories the judge chose, one JSON line each, for `ghoul prepare jsonl`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul.config import option
from ghoul.errors import GhoulError
from ghoul.feedback.records import RANKINGS_FILE, WINNERS_FILE, full_text, load_rankings, load_stories, stories_judged
from ghoul.files import refuse_input_as_output, refuse_to_replace, write_jsonl


@dataclass
class ExportWinnersConfig:
    rankings: Path = option(Path(RANKINGS_FILE), "judgments made by `ghoul rank`", positional=True)
    stories: Path | None = option(None, "the stories they judged (default: stories.jsonl beside the rankings)")
    out: Path = option(Path(WINNERS_FILE), "JSON lines of the winning stories: id, group and text (prompt and story)")

    def __post_init__(self) -> None:
        self.rankings, self.out = Path(self.rankings), Path(self.out)
        self.stories = stories_judged(self.rankings, self.stories)
        refuse_input_as_output(self.out, self.rankings, self.stories)
        refuse_to_replace(self.out, ("id", "group", "text"))


def winners_by_group(rankings: list[dict[str, Any]]) -> dict[int, int]:
    """The chosen story of each group, in group order; the last judgment of a group counts, skipped ones do not."""
    last = {r["group"]: r for r in rankings}
    return {g: last[g]["chosen"] for g in sorted(last) if last[g].get("chosen") is not None}


def run(cfg: ExportWinnersConfig) -> list[int]:
    """Write the winners of cfg.rankings to cfg.out; returns their story ids."""
    chosen = winners_by_group(load_rankings(cfg.rankings))
    stories = load_stories(cfg.stories)
    ids = list(chosen.values())
    if not ids:
        raise GhoulError(f"{cfg.rankings} holds no chosen stories (every group skipped or none judged)")
    missing = [i for i in ids if i not in stories]
    if missing:
        raise GhoulError(f"{cfg.rankings} chose stories {missing[:5]} that {cfg.stories} does not hold: "
                         "give the stories file they were judged from with --stories")
    records = ({"id": i, "group": g, "text": full_text(stories[i]).strip()} for g, i in chosen.items())
    write_jsonl(cfg.out, records)
    print(f"wrote {len(ids)} winning stories to {cfg.out}", file=sys.stderr)
    return ids
