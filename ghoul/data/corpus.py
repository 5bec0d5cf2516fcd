"""The default run's text: the corpora it trains on, the Reddit stories held out by document for validation, and
each corpus written as JSON lines (val documents first) for `ghoul prepare jsonl`.

Every story held out is a whole document the model never sees in training, so the validation loss measures how
well it writes new stories, not how well it remembers old ones.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from ghoul.data.sources import make_source
from ghoul.files import write_jsonl

HELD_OUT_EVERY = 10  # every 10th Reddit story (in file order, so both subreddits) is a validation story


@dataclass
class Corpus:
    """Documents for training and for validation."""

    train: list[str]
    val: list[str]


# A corpus is made of sources: (source name, file of it in a data folder laid out as shared/data).
CORPORA: dict[str, tuple[tuple[str, str], ...]] = {
    "stories": (("creepypasta", "creepypasta/reddit_horror_stories.jsonl"),),
    "horror": (("creepypasta", "creepypasta/reddit_horror_stories.jsonl"), ("lovecraft", "lovecraft/lovecraft.txt.gz")),
    "general": (("fineweb", "fineweb/fineweb_subset.jsonl"), ("tinyshakespeare", "tinyshakespeare/input.txt")),
}
CORPUS_HELP = ("stories: the Reddit horror stories; horror: the stories and Lovecraft's fiction; general: the FineWeb "
               "sample and tiny Shakespeare")
FINEWEB_DOWNLOAD_DOCS = 2000  # FineWeb streams from the Hub without a local file: about the local sample's size


def build_corpus(name: str, local: Callable[[str], str | None], seed: int) -> Corpus:
    """The documents of corpus `name`, from local files (`local(relative path)`, None: download), the training ones
    shuffled with `seed` so that the sources interleave; the Reddit stories' held-out ones are its validation."""
    train: list[str] = []
    val: list[str] = []
    for source, relative in CORPORA[name]:
        path = local(relative)
        # FineWeb without a local file streams from the Hub: its first documents, not all ten billion tokens
        limit = FINEWEB_DOWNLOAD_DOCS if source == "fineweb" and path is None else None
        docs = list(islice(make_source(source, path), limit))
        if source == "creepypasta":
            val += docs[::HELD_OUT_EVERY]
            docs = [d for i, d in enumerate(docs) if i % HELD_OUT_EVERY]
        train += docs
    random.Random(seed).shuffle(train)
    if not val:  # general text has no held-out stories: its first documents (after the shuffle) are its val split
        n = max(1, len(train) // HELD_OUT_EVERY)
        train, val = train[n:], train[:n]
    return Corpus(train, val)


def write_corpus(corpus: Corpus, path: Path) -> None:
    """One JSON object a line, {"text": ...}, the validation documents first (`ghoul prepare --val-tokens`)."""
    write_jsonl(path, ({"text": doc} for doc in corpus.val + corpus.train))
