"""A synthetic preference for the preference-learning tests: of each group of 4 stories, the one that holds the
marker word wins. A learner that finds the word reaches full pairwise accuracy; one that does not stays at chance."""

from __future__ import annotations

import random
from pathlib import Path

from ghoul.files import append_jsonl

MARKER = " ghoul"
WORDS = [" the", " door", " night", " cold", " house", " dark", " old", " room", " light", " stairs", " wind"]


def write_marker_rankings(directory: Path, groups: int, seed: int = 0, group_size: int = 4) -> Path:
    """stories.jsonl and rankings.jsonl in `directory`: in every group story 0 (shown in a random place) holds the
    marker and is chosen. Returns the rankings file."""
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for g in range(groups):
        ids = [g * group_size + k for k in range(group_size)]
        for k, i in enumerate(ids):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            if k == 0:
                words.insert(rng.randrange(len(words) + 1), MARKER)
            append_jsonl(directory / "stories.jsonl", dict(id=i, prompt="In the attic", text="".join(words),
                                                             checkpoint="test", sampling={}, seed=0))
        shown = ids[:]
        rng.shuffle(shown)
        append_jsonl(directory / "rankings.jsonl", dict(group=g, shown=shown, chosen=ids[0],
                                                         position=shown.index(ids[0]) + 1, judge="marker",
                                                         task="t", reason="", raw="", time="", seconds=0.0,
                                                         skipped=False))
    return directory / "rankings.jsonl"
