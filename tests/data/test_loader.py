"""The loader: disjoint ranks that cover the data, wrap-around, exact resume, the val split, in-memory corpora."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ghoul.data.loader import ShardLoader
from ghoul.data.prepare import PrepareConfig, run
from ghoul.data.shards import read_shard, shard_name, write_shard
from ghoul.errors import GhoulError
from ghoul.files import write_json


def arange_shards(directory: Path, sizes: list[int], split: str = "train") -> np.ndarray:
    """Shards whose tokens are their own stream positions, so a batch says where it came from."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = np.arange(sum(sizes), dtype=np.uint16)
    start = 0
    for i, size in enumerate(sizes):
        write_shard(directory / shard_name(split, i), tokens[start:start + size])
        start += size
    return tokens


@pytest.fixture(scope="module")
def fineweb_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards") / "fineweb"
    run(PrepareConfig("fineweb", out, source_path=str(data / "fineweb" / "fineweb_subset.jsonl"),
                      shard_tokens=60_000, val_tokens=20_000, workers=1, progress=False))
    return out


@pytest.mark.parametrize("leftover", [0, 37])
def test_two_ranks_are_disjoint_and_cover_the_tokens(tmp_path: Path, leftover: int) -> None:
    B, T, W = 2, 16, 2
    steps = 11
    n = steps * B * T * W + 1 + leftover  # +1: the last y target
    tokens = arange_shards(tmp_path, [n // 3, n // 3 - 5, n - 2 * (n // 3) + 5])  # shards cut inside batches
    loaders = [ShardLoader(tmp_path, B, T, rank=r, world_size=W) for r in range(W)]
    assert all(loader.steps_per_epoch == steps for loader in loaders)
    seen: list[list[int]] = [[] for _ in range(W)]
    for _ in range(steps):
        for r, loader in enumerate(loaders):  # all ranks in step
            x, y = next(loader)
            assert x.shape == y.shape == (B, T) and x.dtype == torch.int64
            assert torch.equal(y, x + 1)  # y is x shifted by one token
            seen[r] += x.flatten().tolist()
    assert not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == tokens[:steps * B * T * W].tolist()
    assert all(loader.epoch == 0 for loader in loaders)


def test_wraps_around_and_counts_epochs(tmp_path: Path) -> None:
    arange_shards(tmp_path, [1000])
    loader = ShardLoader(tmp_path, 3, 20)
    first = next(loader)
    for _ in range(loader.steps_per_epoch - 1):
        next(loader)
    assert loader.epoch == 0
    again = next(loader)
    assert loader.epoch == 1
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_resume_from_state_dict_gives_the_next_batch(fineweb_dir: Path) -> None:
    a = ShardLoader(fineweb_dir, 4, 64, rank=1, world_size=2)
    for _ in range(a.steps_per_epoch + 5):  # past one wrap-around
        next(a)
    state = json.loads(json.dumps(a.state_dict()))  # it goes into a JSON trainer state
    expected = next(a)
    b = ShardLoader(fineweb_dir, 4, 64, rank=1, world_size=2)
    b.load_state_dict(state)
    got = next(b)
    assert b.epoch == a.epoch == 1
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    other = ShardLoader(fineweb_dir, 4, 64, split="val")
    with pytest.raises(GhoulError, match="resume with the same data"):
        other.load_state_dict(state)


def test_val_split_and_reset(fineweb_dir: Path) -> None:
    val = ShardLoader(fineweb_dir, 2, 128, split="val")
    assert val.tokens == 20_000 and val.vocab_size == 50257 and val.eot_id == 50256
    shard = np.asarray(read_shard(fineweb_dir / "val_000000.bin"), dtype=np.int64)
    batches = list(val.one_epoch())
    assert len(batches) == val.steps_per_epoch == (20_000 - 1) // 256
    assert batches[1][0].flatten().tolist() == shard[256:512].tolist()
    assert len(list(val.one_epoch(max_batches=3))) == 3
    val.reset()
    assert torch.equal(next(val)[0], batches[0][0]) and val.epoch == 0
    train = ShardLoader(fineweb_dir, 2, 128)
    assert train.tokens > val.tokens
    assert not torch.equal(next(train)[0], batches[0][0])


def test_in_memory_corpus(fineweb_dir: Path) -> None:
    tokens = np.concatenate([read_shard(p) for p in sorted(fineweb_dir.glob("train_*.bin"))])
    from_files = ShardLoader(fineweb_dir, 2, 32, rank=1, world_size=2)
    in_memory = ShardLoader(fineweb_dir, 2, 32, rank=1, world_size=2, in_memory=True)
    from_array = ShardLoader(tokens, 2, 32, rank=1, world_size=2)
    from_tensor = ShardLoader(torch.from_numpy(tokens.astype(np.int64)), 2, 32, rank=1, world_size=2)
    for _ in range(5):
        batches = [next(loader) for loader in (from_files, in_memory, from_array, from_tensor)]
        assert all(torch.equal(b[0], batches[0][0]) and torch.equal(b[1], batches[0][1]) for b in batches)


def test_llmc_directory_without_meta(tmp_path: Path) -> None:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = 20240520, 1, 513
    (tmp_path / "fineweb_train_000001.bin").write_bytes(header.tobytes() + np.arange(513, dtype=np.uint16).tobytes())
    x, y = next(ShardLoader(tmp_path, 4, 128))
    assert x.flatten().tolist() == list(range(512)) and y[-1, -1].item() == 512


def test_loader_errors(tmp_path: Path) -> None:
    arange_shards(tmp_path, [100])
    with pytest.raises(GhoulError, match="100 train tokens are too few"):
        ShardLoader(tmp_path, 4, 32)
    with pytest.raises(GhoulError, match="rank 2 is not in 0..1"):
        ShardLoader(tmp_path, 1, 8, rank=2, world_size=2)
    with pytest.raises(GhoulError, match="holds no val shards"):
        ShardLoader(tmp_path, 1, 8, split="val")
    with pytest.raises(GhoulError, match="1-D integer array"):
        ShardLoader(np.zeros((4, 4)), 1, 2)
    write_json(tmp_path / "meta.json", {"vocab_size": 100_000, "shards": {"train": [100], "val": []}})
    with pytest.raises(GhoulError, match=r"train_000000.bin: a vocabulary of 100,000 tokens does not fit its uint16"):
        ShardLoader(tmp_path, 1, 8)
    (tmp_path / "meta.json").unlink()
    path = tmp_path / "train_000000.bin"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(GhoulError, match="train_000000.bin: truncated shard"):
        ShardLoader(tmp_path, 1, 8)


def test_token_ids_outside_the_models_vocabulary_are_refused(tmp_path: Path) -> None:
    arange_shards(tmp_path, [1000])  # ids 0..999
    loader = ShardLoader(tmp_path, 2, 16, vocab_size=40)
    next(loader)  # ids 0..32 (x and y's last target)
    with pytest.raises(GhoulError, match=r"holds token id 64, outside the model's vocabulary of 40 \(at token 32 of"):
        next(loader)


@pytest.mark.parametrize("state", [{"position": "x", "epoch": 0}, {"position": None}, {"position": 10**9, "epoch": 0},
                                   {"position": 0, "epoch": -1}])
def test_a_damaged_loader_state_is_a_value_error(tmp_path: Path, state: dict) -> None:
    arange_shards(tmp_path, [1000])
    loader = ShardLoader(tmp_path, 2, 16)
    with pytest.raises(ValueError, match="no stream position"):
        loader.load_state_dict({**loader.state_dict(), **state})
