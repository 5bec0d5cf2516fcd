"""Fixtures for the evaluation tests: the real HellaSwag files and tiny models (GPT-2 vocabulary, or characters)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul.checkpoint import save_model_dir
from ghoul.model import GPT, GPTConfig
from ghoul.tokenizer.char import CharTokenizer


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine OpenMP's spin-waiting threads cost more than they give
    (a 2-layer forward took 70x longer on 2 busy threads than on 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def hellaswag_full(data: Path) -> Path:
    return data / "hellaswag" / "hellaswag_val.jsonl"


@pytest.fixture(scope="session")
def hellaswag_100(data: Path) -> Path:
    return data / "hellaswag" / "hellaswag_val_first100.jsonl"


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised `tiny` model with GPT-2's tokenizer."""
    path = tmp_path_factory.mktemp("models") / "tiny_gpt2"
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny")), path)
    return path


@pytest.fixture(scope="session")
def char_model(tmp_path_factory: pytest.TempPathFactory, hellaswag_full: Path) -> Path:
    """A random tiny model over the characters of the HellaSwag file: a small head, so scoring is fast."""
    texts = []
    with open(hellaswag_full, encoding="utf-8") as f:
        for line in f:
            record = json.loads(line)
            texts += [record["ctx"]] + [" " + e for e in record["endings"]]
    tokenizer = CharTokenizer.train(texts)
    path = tmp_path_factory.mktemp("models") / "char"
    torch.manual_seed(0)
    save_model_dir(GPT(GPTConfig.from_name("tiny", vocab_size=tokenizer.vocab_size, block_size=96)), path, tokenizer)
    return path


def write_llmc_shard(path: Path, tokens: list[int]) -> None:
    """A shard in llm.c's format, written here by hand: 256 int32 header (magic, version 1, count), uint16 tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = 20240520, 1, len(tokens)
    path.write_bytes(header.tobytes() + np.asarray(tokens, dtype=np.uint16).tobytes())


@pytest.fixture(scope="session")
def shard_dir(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Token shards of real text (tiny shakespeare, GPT-2 tokens): a train and a val shard, and meta.json."""
    from ghoul.tokenizer import load_tokenizer

    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:60_000]
    tokens = load_tokenizer("gpt2").encode(text)
    path = tmp_path_factory.mktemp("shards")
    split = len(tokens) * 3 // 4
    write_llmc_shard(path / "train_000000.bin", tokens[:split])
    write_llmc_shard(path / "val_000000.bin", tokens[split:])
    meta = {"source": "text", "tokenizer": "gpt2", "vocab_size": 50257, "eot_id": 50256,
            "shards": {"train": [split], "val": [len(tokens) - split]}}
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def char_shard_dir(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """Val shards of tiny shakespeare in characters, as `ghoul prepare --tokenizer FILE` leaves them: ids that a
    GPT-2 model would take for other tokens without complaint."""
    text = (data / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")[:5_000]
    tokenizer = CharTokenizer.train([text])
    path = tmp_path_factory.mktemp("char_shards")
    tokenizer.save(path / "tokenizer.json")
    tokens = tokenizer.encode(text)
    write_llmc_shard(path / "val_000000.bin", tokens)
    meta = {"source": "text", "tokenizer": "tokenizer.json", "vocab_size": tokenizer.vocab_size,
            "eot_id": tokenizer.eot_id, "shards": {"train": [], "val": [len(tokens)]}}
    (path / "meta.json").write_text(json.dumps(meta), encoding="utf-8")
    return path
