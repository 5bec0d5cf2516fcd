"""Token shards made once per session from the real FineWeb sample and horror stories, and a tiny run's settings."""

import json
from pathlib import Path

import pytest

from ghoul.config import build
from ghoul.data.prepare import PrepareConfig
from ghoul.data.prepare import run as prepare
from ghoul.eval.loss import read_split
from ghoul.tokenizer import load_tokenizer
from ghoul.train.config import TrainConfig


def log(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "log.jsonl").open()]


def losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in log(run_dir) if "loss" in r]


def config(shards: Path, out: Path, **kw) -> TrainConfig:
    """The tiny model on CPU, a few steps: what most training tests run."""
    base = dict(dataset=str(shards), output_dir=out, model="tiny", batch_size=4, seq_len=64, max_steps=8,
                learning_rate=3e-3, eval_every=4, eval_iters=2, device="cpu")
    return build(TrainConfig, **{**base, **kw})


def val_bytes_per_token(shards: Path, n: int) -> float:
    """UTF-8 bytes per token of the first `n` validation targets of GPT-2 shards (tokens 1..n: the batches' targets
    are their inputs shifted by one), decoded by tiktoken; <|endoftext|> stands for no text."""
    tok = load_tokenizer("gpt2")
    targets = [int(t) for t in read_split(shards, "val")[0][1:n + 1]]
    return len(tok.encoding.decode_bytes([t for t in targets if t != tok.eot_id])) / n


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
