"""The default run's corpora: the held-out Reddit stories are whole documents that training never sees, and the
prepared val split holds exactly them."""

from __future__ import annotations

import json
from pathlib import Path

from ghoul.data import corpus as corpus_module
from ghoul.data.corpus import HELD_OUT_EVERY, build_corpus, write_corpus
from ghoul.data.loader import ShardLoader
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.data.sources import make_source
from ghoul.tokenizer.bpe import BPETokenizer


def local(data: Path):
    return lambda relative: str(data / relative)


def test_held_out_stories_are_whole_documents_never_trained_on(data: Path) -> None:
    stories = list(make_source("creepypasta", data / "creepypasta" / "reddit_horror_stories.jsonl"))
    horror = build_corpus("horror", local(data), seed=1)
    only_stories = build_corpus("stories", local(data), seed=2)
    assert horror.val == only_stories.val == stories[::HELD_OUT_EVERY]  # the same stories for every corpus
    assert not set(horror.val) & set(horror.train) and not set(only_stories.val) & set(only_stories.train)
    assert sorted(only_stories.train + only_stories.val) == sorted(stories)  # nothing else lost or added
    lovecraft = set(make_source("lovecraft", data / "lovecraft" / "lovecraft.txt.gz"))
    assert lovecraft <= set(horror.train) and not lovecraft & set(only_stories.train)
    kinds = [doc in lovecraft for doc in horror.train[:200]]
    assert 20 < sum(kinds) < 180  # shuffled: the sources interleave instead of following each other
    assert build_corpus("horror", local(data), seed=1) == horror  # the same seed, the same order


def test_general_text_holds_out_its_own_first_documents(data: Path) -> None:
    general = build_corpus("general", local(data), seed=1)
    assert len(general.val) == (len(general.train) + len(general.val)) // HELD_OUT_EVERY
    assert not set(general.val) & set(general.train)
    assert any(doc.startswith("First Citizen:") for doc in general.train + general.val)


def test_prepared_val_split_is_exactly_the_held_out_stories(data: Path, tmp_path: Path) -> None:
    corpus = build_corpus("stories", local(data), seed=1)
    corpus.train = corpus.train[:100]  # a small training split keeps the test quick; the val split is whole
    tokenizer = BPETokenizer.train(corpus.train, 300)
    tokenizer.save(tmp_path / "tokenizer.json")
    text = tmp_path / "stories.jsonl"
    write_corpus(corpus, text)
    assert json.loads(text.read_text(encoding="utf-8").splitlines()[0])["text"] == corpus.val[0]
    val_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch(corpus.val))
    prepare(PrepareConfig("jsonl", tmp_path / "shards", tokenizer=str(tmp_path / "tokenizer.json"),
                          source_path=str(text), val_tokens=val_tokens, workers=1, progress=False))
    val = ShardLoader(tmp_path / "shards", 1, val_tokens - 1, split="val")
    x, y = next(val)
    ids = x[0].tolist() + [y[0, -1].item()]
    assert tokenizer.decode(ids).split("<|endoftext|>")[:-1] == corpus.val


def test_fineweb_without_a_local_file_reads_only_the_documents_it_keeps(data: Path, monkeypatch) -> None:
    """Without the local sample, FineWeb streams from the Hub: the corpus takes its first documents and stops
    reading, instead of reading the ten billion tokens of sample-10BT to keep two thousand documents."""
    read = []

    def stream(source, path):
        if source != "fineweb":
            return make_source(source, path)
        assert path is None  # the download path
        return (read.append(i) or f"fineweb document {i}" for i in range(10 * corpus_module.FINEWEB_DOWNLOAD_DOCS))

    monkeypatch.setattr(corpus_module, "make_source", stream)
    general = build_corpus("general", lambda relative: None if "fineweb" in relative else str(data / relative), 1)
    kept = [doc for doc in general.train + general.val if doc.startswith("fineweb document")]
    assert len(kept) == corpus_module.FINEWEB_DOWNLOAD_DOCS
    assert len(read) <= corpus_module.FINEWEB_DOWNLOAD_DOCS + 1
