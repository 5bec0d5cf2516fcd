"""`ghoul export winners`: the stories the judge chose, separated by <|endoftext|>, for `ghoul prepare rlhf`."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ghoul.config import option
from ghoul.data.sources import EOT
from ghoul.errors import GhoulError
from ghoul.feedback.records import RANKINGS_FILE, full_text, load_rankings, load_stories, stories_judged
from ghoul.files import atomic_write_text, refuse_input_as_output


@dataclass
class ExportWinnersConfig:
    rankings: Path = option(Path(RANKINGS_FILE), "judgments made by `ghoul rank`", positional=True)
    stories: Path | None = option(None, "the stories they judged (default: stories.jsonl beside the rankings)")
    out: Path = option(Path("winners.txt"), "text file of the winning stories, separated by <|endoftext|>")

    def __post_init__(self) -> None:
        self.rankings, self.out = Path(self.rankings), Path(self.out)
        self.stories = stories_judged(self.rankings, self.stories)
        refuse_input_as_output(self.out, self.rankings, self.stories)


def winning_ids(rankings: list[dict[str, Any]]) -> list[int]:
    """The chosen story of each group, in group order; the last judgment of a group counts, skipped ones do not."""
    last = {r["group"]: r for r in rankings}
    return [last[g]["chosen"] for g in sorted(last) if last[g].get("chosen") is not None]


def run(cfg: ExportWinnersConfig) -> list[int]:
    """Write the winners of cfg.rankings to cfg.out; returns their story ids."""
    rankings = load_rankings(cfg.rankings)
    stories = load_stories(cfg.stories)
    ids = winning_ids(rankings)
    if not ids:
        raise GhoulError(f"{cfg.rankings} holds no chosen stories (every group skipped or none judged)")
    missing = [i for i in ids if i not in stories]
    if missing:
        raise GhoulError(f"{cfg.rankings} chose stories {missing[:5]} that {cfg.stories} does not hold: "
                         "give the stories file they were judged from with --stories")
    # the separator on its own line keeps the file readable; the rlhf source strips the whitespace around stories
    atomic_write_text(cfg.out, f"\n{EOT}\n".join(full_text(stories[i]).strip() for i in ids) + "\n")
    print(f"wrote {len(ids)} winning stories to {cfg.out}", file=sys.stderr)
    return ids
