"""Token shards made once per session from the real FineWeb sample and horror stories."""

from pathlib import Path

import pytest

from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare


@pytest.fixture(scope="session")
def fineweb_shards(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "fineweb"
    prepare(PrepareConfig(source="fineweb", source_path=str(data / "fineweb" / "fineweb_subset.jsonl"), out=out,
                          val_tokens=16_384, workers=1, progress=False))
    return out


@pytest.fixture(scope="session")
def horror_shards(data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "horror"
    prepare(PrepareConfig(source="creepypasta", source_path=str(data / "creepypasta" / "reddit_horror_stories.jsonl"),
                          out=out, val_tokens=8_192, workers=1, limit_docs=300, progress=False))
    return out
